"""DeepJIT (DeepEP 2.5's JIT runtime) cache keys, nvcc flags and entry metadata, reimplemented.

DeepEP 2.5 names each compiled kernel ``<root>/cache/<name>.<digest>/``. The
digest is ``deep_jit::Runtime::cache_key``: a two-state FNV-1a hash whose every
update is prefixed with its length (``deep_jit/utils/hash.hpp``), fed, in this
order, with

1. the extra signature of the runtime's config (empty for DeepEP),
2. the hex digest of the full ``nvcc --version`` output (stdout and stderr),
3. the nvcc flags joined by single spaces (``CompilerOptions::get_flags``),
4. the post-hook hash (empty: DeepEP sets no post hook),
5. the hash of the source and, recursively, of every ``#include <deep_ep/...>``
   header it pulls in (``deep_jit/utils/parser.hpp``).

Header *paths* never enter the digest (only their contents do), but the NCCL
include directory does, as the ``-I<nccl>/include`` flag. Reproducing the
digest exactly is what lets an ahead-of-time compile land where DeepEP's own
runtime will look. This module is pure apart from reading header files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from jitcache.errors import HeaderError

__all__ = [
    "DEEP_EP_INCLUDE_PREFIXES",
    "CompilerOptions",
    "FNV1a",
    "IncludeHasher",
    "NonStandardInclude",
    "cache_key",
    "compiler_hash",
    "deep_ep_compiler_options",
    "entry_name",
    "hex_digest",
    "meta_json",
    "nvcc_command",
    "options_from_meta",
]

_MASK = (1 << 64) - 1
_SEED_0 = 0xC6A4A7935BD1E995
_SEED_1 = 0xFF51AFD7ED558CCD
_PRIME_0 = 0x100000001B3
_PRIME_1 = 0x9E3779B97F4A7C15

#: What DeepEP 2.5's ``init_jit`` gives DeepJIT's parser: only these includes are hashed.
DEEP_EP_INCLUDE_PREFIXES = ("deep_ep/",)


def _split_mix(value: int) -> int:
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


class FNV1a:
    """DeepJIT's hasher: two FNV-1a states, each update prefixed by its 64-bit little-endian length."""

    __slots__ = ("state_0", "state_1")

    def __init__(self) -> None:
        self.state_0 = _SEED_0
        self.state_1 = _SEED_1

    def copy(self) -> "FNV1a":
        other = FNV1a()
        other.state_0, other.state_1 = self.state_0, self.state_1
        return other

    def update(self, data: str | bytes) -> "FNV1a":
        raw = _as_bytes(data)
        s0, s1 = self.state_0, self.state_1
        for byte in len(raw).to_bytes(8, "little") + raw:
            s0 = ((s0 ^ byte) * _PRIME_0) & _MASK
            s1 = ((s1 ^ byte) * _PRIME_1) & _MASK
        self.state_0, self.state_1 = s0, s1
        return self

    def hexdigest(self) -> str:
        return f"{_split_mix(self.state_0):016x}{_split_mix(self.state_1):016x}"


def hex_digest(data: str | bytes) -> str:
    """``deep_jit::hash::get_hex_digest``: one length-prefixed update, 32 hex digits."""
    return FNV1a().update(data).hexdigest()


def compiler_hash(nvcc_version_output: str) -> str:
    """The compiler part of the key: the digest of everything ``nvcc --version`` printed."""
    return hex_digest(nvcc_version_output)


class NonStandardInclude(HeaderError):
    """DeepJIT refuses (panics on) an include it cannot parse, e.g. ``#include "x.h"``."""


_SPACES = " \t\f\v"


def _parse_include(line: bytes, prefixes: Sequence[str]) -> str | None:
    """The header name of a hashed ``#include <prefix...>`` line, else None (``Parser::parse_include``)."""
    line = line.lstrip(_SPACES.encode())
    if not line.startswith(b"#"):
        return None
    line = line[1:].lstrip(_SPACES.encode())
    if not line.startswith(b"include"):
        return None
    line = line[len(b"include"):].lstrip(_SPACES.encode())
    if not line or line[:1] not in (b"<", b'"'):
        return None
    closing = min((i for i in (line.find(b">", 1), line.find(b'"', 1)) if i >= 0), default=-1)
    if closing < 0:
        return None
    name = line[1:closing]
    if (line[:1] != b"<" or line[closing:closing + 1] != b">" or not name
            or name[:1] in b" \t\f\v" or name[-1:] in b" \t\f\v"):
        raise NonStandardInclude(f"non-standard include: {line[:closing + 1].decode(errors='replace')}")
    text = name.decode("utf-8", errors="surrogateescape")
    return text if any(text.startswith(p) for p in prefixes) else None


class IncludeHasher:
    """``deep_jit::Parser``: hash a source with the hashes of the library headers it includes.

    ``include_dirs`` are searched in order for each ``#include <deep_ep/...>``;
    results are memoised per header name, like DeepJIT's parser (one per runtime).
    """

    def __init__(self, include_dirs: Iterable[str | Path],
                 prefixes: Sequence[str] = DEEP_EP_INCLUDE_PREFIXES,
                 read: Callable[[Path], bytes] | None = None) -> None:
        self.include_dirs = tuple(Path(d) for d in include_dirs)
        self.prefixes = tuple(prefixes)
        self._read = read or (lambda p: p.read_bytes())
        self._cache: dict[str, str] = {}
        self._visiting: set[str] = set()

    def hash_source(self, code: str | bytes) -> str:
        raw = _as_bytes(code)
        hasher = FNV1a().update(raw)
        for line in raw.split(b"\n"):
            name = _parse_include(line, self.prefixes)
            if name is not None:
                hasher.update(self.hash_header(name))
        return hasher.hexdigest()

    def hash_header(self, name: str) -> str:
        if name in self._cache:
            return self._cache[name]
        if name in self._visiting:
            raise NonStandardInclude(f"circular include may occur: {name}")
        self._visiting.add(name)
        try:
            path = next((d / name for d in self.include_dirs if (d / name).exists()), None)
            if path is None:
                raise FileNotFoundError(
                    f"header <{name}> is in none of: {', '.join(map(str, self.include_dirs)) or '(no include dir)'}")
            digest = self.hash_source(self._read(path))
        finally:
            self._visiting.discard(name)
        self._cache[name] = digest
        return digest


@dataclass(frozen=True)
class CompilerOptions:
    """``deep_jit::cuda::CompilerOptions`` with DeepJIT's defaults (no debug environment variables)."""

    arch: str  # without "sm_": "90a", "100f"
    nvcc_flags: tuple[str, ...]
    optimize_level: str = "3"
    fast_math: bool = False
    ptxas_verbose: bool = False
    ptxas_register_usage_level: int = 10
    check_no_spills: bool = False
    check_no_local_memory: bool = False
    with_line_info: bool = False
    dump_ptx: bool = False
    dump_sass: bool = False
    extra_nvcc_flags: tuple[str, ...] = ()
    post_hook: str | None = None

    def flags(self) -> list[str]:
        """``CompilerOptions::get_flags``, in DeepJIT's order."""
        out = [f"--gpu-architecture=sm_{self.arch}", f"-O{self.optimize_level}",
               f"--compiler-options=-O{self.optimize_level}"]
        if self.fast_math:
            out.append("--use_fast_math")
        if self.ptxas_verbose:
            out.append("--ptxas-options=--verbose")
        out.append(f"--ptxas-options=--register-usage-level={self.ptxas_register_usage_level}")
        if self.check_no_spills:
            out.append("--ptxas-options=--warn-on-spills")
        if self.check_no_local_memory:
            out.append("--ptxas-options=--warn-on-local-memory-usage")
        if self.with_line_info:
            out.append("--generate-line-info")
        return out + list(self.nvcc_flags) + list(self.extra_nvcc_flags)

    def flags_string(self) -> str:
        return " ".join(self.flags())

    def to_json(self) -> dict:
        """``CompilerOptions::to_json``: the ``compiler_options`` object of meta.json, in its key order."""
        return {
            "optimize_level": self.optimize_level,
            "use_fast_math": self.fast_math,
            "ptxas_verbose": self.ptxas_verbose,
            "ptxas_register_usage_level": self.ptxas_register_usage_level,
            "check_no_spills": self.check_no_spills,
            "check_no_local_memory": self.check_no_local_memory,
            "with_line_info": self.with_line_info,
            "dump_ptx": self.dump_ptx,
            "dump_sass": self.dump_sass,
            "arch": self.arch,
            "nvcc_flags": list(self.nvcc_flags),
            "extra_nvcc_flags": list(self.extra_nvcc_flags),
            "post_hook": self.post_hook,
        }


def deep_ep_compiler_options(arch: str, nccl_include_dir: str | Path, *, num_topk_idx_bits: int = 64,
                             cpp_standard: int = 20, gin_gdaki_debug: bool = False) -> CompilerOptions:
    """The options DeepEP 2.5 compiles every kernel with (``csrc/runtime/jit.hpp::init_jit``).

    ``arch`` is the profile's ``sm_90a`` form or DeepJIT's ``90a``;
    ``nccl_include_dir`` is ``<nccl root>/include`` *as the target machine spells it*.
    """
    arch = arch[3:] if arch.startswith("sm_") else arch
    flags = [
        f"-std=c++{cpp_standard}",
        "--compiler-options=-fPIC",
        "--compiler-options=-fconcepts",
        "--expt-relaxed-constexpr",
        "--expt-extended-lambda",
        "--diag-suppress=39,161,174,177,186,940,3012",
        "--compiler-options=-Wno-deprecated-declarations,-Wno-abi",
        f"-I{nccl_include_dir}",
        f"-DEP_NUM_TOPK_IDX_BITS={num_topk_idx_bits}",
        "-DNCCL_GIN_GDAKI_ENABLE=1",
        "-DNCCL_GIN_PROXY_ENABLE=0",
        "-DNCCL_GIN_GPI_ENABLE=0",
        "-DNCCL_GIN_EFA_GDA_ENABLE=0",
    ]
    if gin_gdaki_debug:
        flags.append("-DNCCL_DEVICE_GIN_GDAKI_ENABLE_DEBUG=1")
    return CompilerOptions(arch=arch, nvcc_flags=tuple(flags))


def cache_key(source: str | bytes, options: CompilerOptions, nvcc_version_output: str,
              includes: IncludeHasher, *, extra_signature: str = "", post_hook_hash: str = "") -> str:
    """``Runtime::cache_key``: the 32 hex digits of ``<name>.<digest>``."""
    hasher = FNV1a().update(extra_signature).update(compiler_hash(nvcc_version_output))
    hasher.update(options.flags_string())
    hasher.update(post_hook_hash)
    hasher.update(includes.hash_source(source))
    return hasher.hexdigest()


def entry_name(kernel_name: str, digest: str) -> str:
    return f"{kernel_name}.{digest}"


def nvcc_command(nvcc: str | Path, build_dir: str | Path, options: CompilerOptions,
                 include_dirs: Sequence[str | Path]) -> list[str]:
    """The argv DeepJIT runs (``CUDA::compile``), from inside ``build_dir``."""
    build_dir = Path(build_dir)
    args = [str(nvcc), str(build_dir / "kernel.cu"), "--cubin", "--output-file", str(build_dir / "kernel.cubin")]
    args += options.flags()
    for include_dir in include_dirs:
        args += ["--include-path", str(include_dir)]
    return args


def meta_json(command: Sequence[str], *, python_library_root: str, include_dirs: Sequence[str],
              nvcc_path: str, nvcc_version_output: str, options: CompilerOptions,
              extra_signature: str = "", include_prefixes: Sequence[str] = DEEP_EP_INCLUDE_PREFIXES) -> str:
    """The exact bytes DeepJIT writes to ``meta.json`` (compact JSON, its own key order)."""
    data = {
        "command": " ".join(command),
        "config": {
            "python_library_root": python_library_root,
            "extra_signature": extra_signature,
            "include_dirs": list(include_dirs),
            "include_prefixes": list(include_prefixes),
        },
        "compiler_info": {"path": nvcc_path, "version": nvcc_version_output},
        "compiler_options": options.to_json(),
    }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class LearnedEntry:
    """What an existing entry's meta.json says about the machine that wrote it."""

    options: CompilerOptions
    nvcc_path: str
    nvcc_version_output: str
    include_dirs: tuple[str, ...]
    python_library_root: str
    extra_signature: str = ""
    include_prefixes: tuple[str, ...] = field(default=DEEP_EP_INCLUDE_PREFIXES)

    @property
    def nccl_include_dir(self) -> str | None:
        for flag in self.options.nvcc_flags:
            if flag.startswith("-I"):
                return flag[2:]
        return None


def options_from_meta(meta: Mapping | str | bytes) -> LearnedEntry:
    """Parse a DeepJIT ``meta.json`` (text or parsed) into the options and toolchain facts it records.

    Raises :class:`KeyError`/:class:`ValueError` naming the missing field.
    """
    data = json.loads(meta) if isinstance(meta, (str, bytes)) else meta
    try:
        opts = data["compiler_options"]
        config = data["config"]
        info = data["compiler_info"]
        options = CompilerOptions(
            arch=opts["arch"],
            nvcc_flags=tuple(opts.get("nvcc_flags") or ()),
            optimize_level=opts["optimize_level"],
            fast_math=bool(opts.get("use_fast_math")),
            ptxas_verbose=bool(opts.get("ptxas_verbose")),
            ptxas_register_usage_level=int(opts["ptxas_register_usage_level"]),
            check_no_spills=bool(opts.get("check_no_spills")),
            check_no_local_memory=bool(opts.get("check_no_local_memory")),
            with_line_info=bool(opts.get("with_line_info")),
            dump_ptx=bool(opts.get("dump_ptx")),
            dump_sass=bool(opts.get("dump_sass")),
            extra_nvcc_flags=tuple(opts.get("extra_nvcc_flags") or ()),
            post_hook=opts.get("post_hook"),
        )
        return LearnedEntry(options=options, nvcc_path=info["path"], nvcc_version_output=info["version"],
                            include_dirs=tuple(config.get("include_dirs") or ()),
                            python_library_root=config.get("python_library_root", ""),
                            extra_signature=config.get("extra_signature", ""),
                            include_prefixes=tuple(config.get("include_prefixes") or DEEP_EP_INCLUDE_PREFIXES))
    except KeyError as exc:
        raise KeyError(f"meta.json lacks field {exc.args[0]!r}") from None


def with_nccl_include(options: CompilerOptions, nccl_include_dir: str | Path) -> CompilerOptions:
    """The same options with the ``-I`` flag pointing elsewhere (another target's NCCL path)."""
    flags = tuple(f"-I{nccl_include_dir}" if f.startswith("-I") else f for f in options.nvcc_flags)
    return replace(options, nvcc_flags=flags)
