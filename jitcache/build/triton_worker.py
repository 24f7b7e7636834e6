"""The Triton AOT's other half: what runs in the build pool's worker process, and its publish.

:func:`worker_main` reads the spec file :func:`jitcache.build.triton_aot.jobs_for_triton`
wrote into the build dir, recompiles the kernel for exactly that
specialisation with ``triton.compile`` and checks that the cache key is the
one the job was named by; :func:`publish_triton_entry` moves the result into
the root's ``triton/`` (group files rewritten for their final place) and
:func:`triton_entry_present` is the existence rule the pool asks.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

from jitcache.errors import CacheError
from jitcache.build.triton_aot import _cache_key, _decode, _load_kernel

__all__ = ["publish_triton_entry", "triton_entry_present", "worker_main"]


def triton_entry_present(final: Path, group_file: str) -> bool:
    """Triton's own rule (``FileCacheManager.get_group``): the group parses and every listed file exists."""
    try:
        children = json.loads((final / group_file).read_text(encoding="utf-8"))["child_paths"]
        return isinstance(children, dict) and all(os.path.exists(p) for p in children.values())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _point_groups_at(build: Path, final: Path) -> None:
    from jitcache.store.publish import atomic_write_text

    for group in build.glob("__grp__*.json"):
        children = json.loads(group.read_text(encoding="utf-8"))["child_paths"]
        moved = {name: str(final / name) for name in children}
        missing = [name for name in children if not (build / name).is_file()]
        if missing:
            raise CacheError(f"{group}: lists {', '.join(missing)}, not in the build", path=group)
        atomic_write_text(group, json.dumps({"child_paths": moved}))


def publish_triton_entry(build: Path, final: Path) -> bool:
    """Publish a flat Triton key directory built in ``build`` as ``final``; ``False`` when one was there.

    The group files are rewritten to list ``final``'s paths (Triton stores
    absolute paths). One rename publishes the entry. Triton's runtime creates
    ``<key>/`` on a lookup miss, so an empty directory there is replaced (a
    rename may land on an empty directory); a non-empty one holding no
    complete group (a Triton compile that died) gets our files one by one,
    the group last: Triton's own publishing order, so its readers never see
    a group whose files are missing.
    """
    from jitcache.store.publish import fsync_dir, fsync_tree, remove_tree

    try:
        _point_groups_at(build, final)
        fsync_tree(build)
        try:
            os.rename(build, final)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            groups = sorted(p.name for p in build.glob("__grp__*.json"))
            if groups and all(triton_entry_present(final, g) for g in groups):
                remove_tree(build)
                return False
            for path in sorted(build.iterdir(), key=lambda p: p.name.startswith("__grp__")):
                os.replace(path, final / path.name)
            remove_tree(build)
        fsync_dir(final.parent)
        return True
    except OSError as exc:
        remove_tree(build)
        raise CacheError(f"{final}: cannot publish Triton entry ({exc.strerror or exc})", path=final) from None


# -- the worker: one compile, in its own process ------------------------------------------------------


def worker_main(spec_path: str) -> int:
    """Compile one spec file into the directory that holds it; the parent publishes. Exit 0 on success."""
    import warnings

    spec_file = Path(spec_path)
    build = spec_file.parent
    # Python warnings (Triton's FP-fusion notice...) go after our one-line summary: the parent
    # reports the first line of stderr.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        status = _compile_spec(spec_file, build)
    for warning in caught:
        sys.stderr.write(warnings.formatwarning(warning.message, warning.category, warning.filename, warning.lineno))
    return status


def _compile_spec(spec_file: Path, build: Path) -> int:
    try:
        payload = json.loads(spec_file.read_text(encoding="utf-8"))
        for entry in reversed(payload["sys_path"]):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        import triton
        from triton import knobs
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import ASTSource

        fn = _load_kernel(payload["location"])
        t = payload["target"]
        target = GPUTarget(t["backend"], t["arch"], t["warp_size"])
        signature = _decode(payload["signature"])
        constexprs = {tuple(p): _decode(v) for p, v in payload["constexprs"]}
        attrs = {tuple(p): v for p, v in payload["attrs"]}
        options = _decode(payload["options"])
        key = _cache_key(fn, signature, constexprs, attrs, options, target)
        if key != payload["key"]:
            raise RuntimeError(f"the worker computes cache key {key}, the planner computed {payload['key']}: the "
                               "kernel's source or the environment differs between them")
        staging = build / ".triton"
        knobs.cache.dir = str(staging)
        from triton.compiler.compiler import make_backend
        parsed = make_backend(target).parse_options(dict(options))
        triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=parsed.__dict__)
        produced = staging / key
        if not produced.is_dir():
            raise RuntimeError(f"triton.compile wrote no {produced}")
        for path in produced.iterdir():
            if path.is_file():
                os.replace(path, build / path.name)
        shutil.rmtree(staging)
        return 0
    except BaseException as exc:  # the parent saves all of this next to the report
        lines = str(exc).strip().splitlines()
        summary = next((line for line in reversed(lines) if line.strip()), "") if lines else ""
        sys.stderr.write(f"{exc.__class__.__name__}: {summary}\n")
        traceback.print_exc()
        return 1
