"""Triton kernels in the AOT pool: register a ``@triton.jit`` kernel once, get it compiled for every bucket.

A user module calls :func:`register` (spelled ``jitcache.triton.register``)
with the kernel and a function ``args_for_bucket(bucket) -> dict`` giving the
arguments serving will launch it with for that bucket (or a list of such
dicts). :func:`jobs_for_triton` turns the registry into
:class:`jitcache.build.pool.BuildJob` s that run in the same pool, under the same
per-entry locks, into the same report as the nvcc jobs.

Why the entries are the ones Triton's runtime looks up (read from Triton 3.9:
``runtime/jit.py``, ``compiler/compiler.py``, ``runtime/cache.py``):

- ``JITFunction.run`` binds the launch arguments with a binder made by
  ``create_function_from_signature`` (integers: ``==1`` becomes a constexpr,
  multiples of 16 get ``tt.divisibility=16``; pointers 16-byte aligned get
  it too), turns them into ``(options, signature, constexprs, attrs)`` with
  ``JITFunction._pack_args`` and calls ``triton.compile(ASTSource(...),
  target=<the GPU's GPUTarget>, options=...)``. We call the *same* binder and
  ``_pack_args`` with the bucket's arguments (pointers stand in as
  :class:`Pointer`), with the target from the profile, so the source,
  options and target are the ones the runtime builds;
- ``triton.compile`` keys its cache by ``sha256(triton_key()-src.hash()-
  backend.hash()-options.hash()-env)``: the installed Triton's own files,
  the kernel's source (and the kernels it calls, its def line, constexpr
  globals), ptxas' version and the arch, every option, and the
  cache-invalidating environment variables that are set. The entry is
  ``<TRITON_CACHE_DIR>/<base32 of that hash>/`` with ``__grp__<name>.json``
  listing absolute paths. Same Triton wheel, same kernel file, same env on
  the GPU host -> same key, and ``triton.compile`` there finds our group.

Each job runs in a fresh Python subprocess (a crash in MLIR or ptxas takes
down one job, and its stderr is saved): the worker imports the kernel,
recomputes the key and refuses to publish when it differs from the
planner's. The entry is built in ``<triton>/tmp/`` and published by one
rename, its group rewritten to point at its final place.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from jitcache.adapters.base import BuildJob
from jitcache.errors import ToolchainError, UsageError

__all__ = ["Pointer", "TritonKernel", "TritonSpec", "clear_registry", "gpu_target", "import_kernel_modules",
           "jobs_for_triton", "register", "registered", "specialize"]

#: Stand-in values for scalar type strings: an integer that is neither 1 nor a multiple of 16 is
#: specialised by Triton as a plain "i32"/"i64" with no divisibility hint.
_SCALAR_STAND_INS: dict[str, Any] = {"i32": 3, "i64": 2**40 + 3, "u64": 2**63 + 3, "fp32": 1.5, "u1": True}

#: The file a Triton job leaves in its entry: what was compiled, for people and for `inspect`.
SPEC_FILE = "jitcache.spec.json"


@dataclass(frozen=True)
class Pointer:
    """A tensor argument as Triton's binder sees it: its element type and whether it is 16-byte aligned.

    ``"*fp16"`` in ``args_for_bucket`` means ``Pointer("fp16")`` (torch's allocations are aligned).
    """

    dtype: str
    aligned: bool = True

    def data_ptr(self) -> int:
        return 0 if self.aligned else 8


@dataclass(frozen=True)
class TritonKernel:
    """One registered kernel: what to compile and how its launch arguments depend on the bucket."""

    name: str
    fn: Any                                   # the triton.runtime.jit.JITFunction
    args_for_bucket: Callable[[int], Any]
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def function_name(self) -> str:
        # triton.compile names the files after fn.__name__, truncated to 150 characters.
        return self.fn.__name__[:150]


@dataclass(frozen=True)
class TritonSpec:
    """One (kernel, bucket) specialisation, exactly as ``JITFunction.run`` would build it on the GPU host."""

    kernel: str
    bucket: int
    signature: dict = field(hash=False)
    constexprs: dict = field(hash=False)
    attrs: dict = field(hash=False)
    options: dict = field(hash=False)         # the launch keywords, before backend.parse_options
    key: str                                  # the Triton cache directory name (base32)


_REGISTRY: dict[str, TritonKernel] = {}


def register(kernel: Any, args_for_bucket: Callable[[int], Any], *, name: str | None = None, num_warps: int = 4,
             num_stages: int = 3, **options: Any) -> TritonKernel:
    """Register a ``@triton.jit`` kernel for AOT warmup; returns the record.

    ``args_for_bucket(bucket)`` returns the launch arguments for one bucket as
    ``{parameter: value}`` (or a list of such dicts): pointers as type strings
    (``"*fp16"``, 16-byte aligned) or :class:`Pointer`; integers and floats as
    the values serving passes (``1`` and multiples of 16 are specialised, as at
    run time); ``"i32"``/``"i64"`` for an integer Triton will not specialise;
    constexprs as their values. Launch options (``num_warps``...) may also
    appear in the dict and override the defaults given here.
    Registering the same name again replaces the record.
    """
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:
        raise ToolchainError("jitcache.triton.register needs triton",
                             hint="pip install 'jitcache[triton]'") from None
    if not isinstance(kernel, JITFunction):
        raise UsageError(f"register: {kernel!r} is not a @triton.jit function (autotuned and heuristics-wrapped "
                         "kernels: register the inner kernel once per config)")
    if not callable(args_for_bucket):
        raise UsageError(f"register({kernel.__name__}): args_for_bucket must be callable, got {args_for_bucket!r}")
    record = TritonKernel(name=name or kernel.__name__, fn=kernel, args_for_bucket=args_for_bucket,
                          options=tuple(sorted({"num_warps": num_warps, "num_stages": num_stages, **options}.items())))
    _REGISTRY[record.name] = record
    return record


def registered() -> tuple[TritonKernel, ...]:
    """The kernels registered in this process, in registration order."""
    return tuple(_REGISTRY.values())


def clear_registry() -> None:
    _REGISTRY.clear()


def import_kernel_modules(names: Iterable[str]) -> tuple[TritonKernel, ...]:
    """Import the user modules whose import calls :func:`register` (``--triton-module``)."""
    for module in names:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(f"--triton-module {module}: cannot import it ({exc})",
                             hint="make it importable (PYTHONPATH, pip install -e) or fix the name") from None
    return registered()


def gpu_target(arch: str) -> Any:
    """The ``GPUTarget`` Triton's driver reports on a GPU of ``arch``: "sm_90a" -> GPUTarget("cuda", 90, 32)."""
    from triton.backends.compiler import GPUTarget

    digits = arch[3:].rstrip("af") if arch.startswith("sm_") else ""
    if not digits.isdigit():
        raise UsageError(f"target.arch: cannot make a Triton target from {arch!r} (expected e.g. sm_90a)")
    return GPUTarget("cuda", int(digits), 32)


# -- specialisation: Triton's own binder, without a device ------------------------------------------


def _stand_in(value: Any) -> Any:
    if isinstance(value, str):
        if value.startswith("*"):
            return Pointer(value[1:].strip())
        if value in _SCALAR_STAND_INS:
            return _SCALAR_STAND_INS[value]
    return value


def _runtime_keywords(kernel: TritonKernel, launch: dict[str, Any]) -> dict[str, Any]:
    """The keywords ``JITFunction.run`` adds before binding (Triton 3.9), with the knobs of this process."""
    from triton import knobs

    keywords = dict(kernel.options)
    keywords.update(launch)
    keywords["debug"] = keywords.get("debug", kernel.fn.debug) or knobs.runtime.debug
    for knob in ("instrumentation_mode", "fpsan_homomorphic_casts"):
        if hasattr(knobs.compilation, knob):
            keywords[knob] = getattr(knobs.compilation, knob)
    return keywords


def _cache_key(fn: Any, signature: dict, constexprs: dict, attrs: dict, options: dict, target: Any) -> str:
    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.compiler.compiler import ASTSource, make_backend
    from triton.runtime.cache import get_cache_key

    backend = make_backend(target)
    src = ASTSource(fn, signature, constexprs, attrs)
    # JITFunction.run parses the launch keywords once, triton.compile parses the result again: do both.
    parsed = backend.parse_options(dict(backend.parse_options(dict(options)).__dict__))
    digest = hashlib.sha256(get_cache_key(src, backend, parsed, get_cache_invalidating_env_vars()).encode()).hexdigest()
    return base64.b32encode(bytes.fromhex(digest)).decode().rstrip("=")


def specialize(kernel: TritonKernel, bucket: int, target: Any) -> tuple[TritonSpec, ...]:
    """The specialisations serving will ask Triton for at ``bucket``, with their cache keys."""
    from triton import knobs
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    if knobs.runtime.add_stages_inspection_hook is not None:
        raise UsageError("triton.knobs.runtime.add_stages_inspection_hook is set: it changes every cache key, "
                         "and jitcache cannot reproduce it in its workers", hint="unset it for the AOT warmup")
    where = f"{kernel.name} bucket={bucket}"
    try:
        launches = kernel.args_for_bucket(bucket)
    except Exception as exc:  # the user's callable: say whose it was
        raise UsageError(f"{where}: args_for_bucket raised {exc.__class__.__name__}: {exc}") from exc
    if isinstance(launches, Mapping):
        launches = [launches]
    if not isinstance(launches, (list, tuple)) or not all(isinstance(a, Mapping) for a in launches):
        raise UsageError(f"{where}: args_for_bucket must return a dict or a list of dicts, got {launches!r}")
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.fn.signature, kernel.fn.params, backend)
    param_names = {p.name for p in kernel.fn.params}
    specs = []
    for launch in launches:
        args = {k: _stand_in(v) if k in param_names else v for k, v in launch.items()}
        keywords = _runtime_keywords(kernel, {k: v for k, v in args.items() if k not in param_names})
        call = {**{k: v for k, v in args.items() if k in param_names}, **keywords}
        try:
            bound, specialization, options = binder(**call)
            options_obj, signature, constexprs, attrs = kernel.fn._pack_args(
                backend, keywords, bound, specialization, options)
        except (TypeError, KeyError, ValueError, AssertionError) as exc:
            raise UsageError(f"{where}: Triton rejects the arguments {launch!r}: {exc}") from None
        except AttributeError as exc:
            raise ToolchainError(f"this Triton's JITFunction has no {exc.name or exc}: jitcache reproduces "
                                 "the runtime of Triton 3.4-3.9", hint="install a triton jitcache supports") from None
        for path, value in constexprs.items():
            _encode(value, f"{where}: constexpr {kernel.fn.arg_names[path[0]]}")
        key = _cache_key(kernel.fn, signature, constexprs, attrs, keywords, target)
        specs.append(TritonSpec(kernel=kernel.name, bucket=bucket, signature=signature, constexprs=constexprs,
                                attrs=attrs, options=keywords, key=key))
    return tuple(specs)


# -- jobs ------------------------------------------------------------------------------------------


def _kernel_location(fn: Any) -> dict[str, str]:
    return {"module": fn.fn.__module__, "qualname": fn.fn.__qualname__, "file": fn.fn.__code__.co_filename}


def jobs_for_triton(kernels: Sequence[TritonKernel], buckets: Iterable[int], arch: str) -> tuple:
    """One :class:`jitcache.build.pool.BuildJob` per distinct Triton cache entry of ``kernels`` x ``buckets``."""
    target = gpu_target(arch)
    by_key: dict[str, tuple[TritonSpec, TritonKernel, list[int]]] = {}
    for kernel in kernels:
        for bucket in buckets:
            for spec in specialize(kernel, bucket, target):
                if spec.key in by_key:
                    if bucket not in by_key[spec.key][2]:
                        by_key[spec.key][2].append(bucket)
                else:
                    by_key[spec.key] = (spec, kernel, [bucket])
    jobs = []
    package_parent = str(Path(__file__).resolve().parents[2])
    code = (f"import sys; sys.path.insert(0, {package_parent!r}); "
            "from jitcache.build.triton_worker import worker_main; sys.exit(worker_main(sys.argv[1]))")
    for key, (spec, kernel, buckets_here) in by_key.items():
        payload = {
            "kernel": kernel.name, "buckets": buckets_here, "location": _kernel_location(kernel.fn),
            "target": {"backend": target.backend, "arch": target.arch, "warp_size": target.warp_size},
            "signature": _encode(spec.signature, kernel.name),
            "constexprs": [[list(p), _encode(v, kernel.name)] for p, v in spec.constexprs.items()],
            "attrs": [[list(p), v] for p, v in spec.attrs.items()],
            "options": _encode(spec.options, kernel.name), "key": key,
            # the worker runs in the build dir: relative entries ("" = the cwd) must be made absolute
            "sys_path": [os.path.abspath(p or os.curdir) for p in sys.path],
        }
        shown = ",".join(map(str, buckets_here))
        jobs.append(BuildJob(entry=key, label=f"triton {kernel.name} bucket={shown}",
                             files=((SPEC_FILE, json.dumps(payload, indent=1) + "\n"),),
                             argv=(sys.executable, "-c", code, "{dir}/" + SPEC_FILE), marker=None,
                             outputs=(f"__grp__{kernel.function_name}.json",),
                             num_max_tokens_per_rank=buckets_here[0], family=kernel.name,
                             backend="triton", tool="triton"))
    return tuple(jobs)


# -- a JSON codec for constexpr values and options (tuples and dtypes must survive: they enter the key) --


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v, where) for k, v in value.items()}
    kind = type(value).__name__
    if kind == "constexpr":
        return {"constexpr": _encode(value.value, where)}
    if kind == "JITFunction":
        return {"jit_function": _kernel_location(value)}
    if hasattr(value, "name") and type(value).__module__.startswith("triton.language"):
        return {"dtype": value.name}
    raise UsageError(f"{where}: cannot hand {value!r} ({kind}) to a compile worker",
                     hint="constexprs may be numbers, strings, tuples, triton dtypes or @triton.jit functions")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"tuple"}:
        return tuple(_decode(v) for v in value["tuple"])
    if set(value) == {"constexpr"}:
        import triton.language as tl
        return tl.constexpr(_decode(value["constexpr"]))
    if set(value) == {"dtype"}:
        import triton.language as tl
        return tl.dtype(value["dtype"])
    if set(value) == {"jit_function"}:
        return _load_kernel(value["jit_function"])
    return {k: _decode(v) for k, v in value.items()}


def _load_kernel(location: dict[str, str]) -> Any:
    module_name, qualname = location["module"], location["qualname"]
    try:
        if module_name == "__main__":
            raise ModuleNotFoundError(name=module_name)
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # A script's own kernel (__main__) or a module loaded from a path: load that file again,
        # under a private name (its `if __name__ == "__main__":` block does not run).
        if exc.name != module_name or not os.path.isfile(location["file"]):
            raise
        spec = importlib.util.spec_from_file_location("_jitcache_user_kernels", location["file"])
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj
