"""The package layers (docs/architecture.md): imports point down the layer list, and no import cycle exists,
counting imports inside functions (a lazy import is still an arrow); version strings live in the adapters."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Lowest first: a module may import from its own layer and the ones before it, never after.
LAYERS = (
    ("core", ("jitcache._version", "jitcache.errors", "jitcache.types", "jitcache.settings")),
    ("planning", ("jitcache.planning",)),
    ("adapters", ("jitcache.adapters",)),
    ("store", ("jitcache.store",)),
    ("build", ("jitcache.build",)),
    ("warm", ("jitcache.warm",)),
    ("runtime", ("jitcache.runtime",)),
    ("entry points", ("jitcache", "jitcache.plugin", "jitcache.triton", "jitcache.cli")),
)


def _modules() -> dict[str, Path]:
    found = {}
    for base, package in ((REPO / "jitcache", "jitcache"), (REPO / "cli", "jitcache.cli")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md"
    return best[0]


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            # `from pkg import submodule` imports the submodule; `from mod import name` the module.
            names = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("jitcache") and (resolved := _resolve(name)) and resolved != module:
                targets.add(resolved)
    return targets


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_import_points_down_the_layers():
    wrong = [f"{m} ({LAYERS[_layer(m)][0]}) imports {t} ({LAYERS[_layer(t)][0]})"
             for m, targets in GRAPH.items() for t in sorted(targets) if _layer(t) > _layer(m)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_lazy_or_not():
    # A package's __init__ that re-exports its modules is not a cycle with them: leave those arrows out.
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in GRAPH.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_only_the_adapters_spell_deep_ep_versions():
    # Docstrings and comments may name a version; code outside jitcache/adapters/ must not compare one, nor
    # name a version's on-disk layout (the store asks adapter_for_layout / parse_entry_name instead).
    literal = re.compile(r"""^["'](2\.1|2\.5|deepjit|deep_ep_2\.1)["']$""")
    found = []
    for module, path in MODULES.items():
        if module.startswith("jitcache.adapters") or module == "jitcache.types":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and literal.match(repr(node.value)):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)


def test_the_readmes_layout_names_every_module():
    text = (REPO / "README.md").read_text()
    start = text.index("## Layout")
    block = text[text.index("```text", start):text.index("```", text.index("```text", start) + 7)]
    missing = [str(path.relative_to(REPO)) for path in MODULES.values()
               if path.name not in ("__init__.py", "__main__.py") and path.stem not in block
               and path.stem.replace("_cmds", "") not in block]
    assert not missing, f"README.md's Layout does not name: {missing}"
