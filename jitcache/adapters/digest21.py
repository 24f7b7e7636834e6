"""DeepEP 2.1 ("V2", ``ElasticBuffer``; PyPI ``tokenspeed-deepep``) JIT cache keys and layout.

Facts (DeepEP 2.1 ``csrc/jit/{compiler,include_parser,launch_runtime}.hpp`` and
``csrc/utils/hash.hpp``; the format strings and hash constants can also be seen
in the wheel's ``_C`` library):

- entry: ``<root>/cache/kernel.<name>.<digest>/`` with ``kernel.cu`` and
  ``kernel.cubin``; no marker, no meta; root ``$EP_JIT_CACHE_DIR`` else ``~/.deep_ep``;
- digest: ``get_hex_digest("<name>$$NVCC<maj>.<min>$$<flags>$$<code>")`` where the
  hash is plain FNV-1a (no length prefix) from two seeds, each finished by
  split-mix-64;
- ``code`` is the generated source prefixed with ``// Includes' hash value: <h>\\n``,
  ``h`` hashing, recursively, every ``#include <deep_ep...>`` header it names;
- flags: one string, with the NCCL root *and* the DeepEP include dir in it,
  so the serving machine's paths matter.

Pure apart from reading headers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from jitcache.errors import HeaderError

__all__ = ["HEADER_PREFIX21", "IncludeHasher21", "cache_key21", "entry_name21", "flags21", "hex_digest21", "nvcc_command21",
           "with_include_hash"]

_MASK = (1 << 64) - 1
_PRIME = 0x100000001B3
_SEEDS = (0xC6A4A7935BD1E995, 0x9E3779B97F4A7C15)
_INCLUDE = re.compile(rb'#\s*include\s*[<"][^>"]+[>"]')
_HEADER = "// Includes' hash value: "
#: The first line of every 2.1 ``kernel.cu`` starts with this.
HEADER_PREFIX21 = _HEADER


def _split_mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def hex_digest21(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    out = []
    for seed in _SEEDS:
        h = seed
        for byte in raw:
            h = ((h ^ byte) * _PRIME) & _MASK
        out.append(f"{_split_mix(h):016x}")
    return "".join(out)


class IncludeHasher21:
    """``IncludeParser``: ``hash("".join(child + "$") [+ "#" + hash(code)])`` over ``<deep_ep...>`` includes."""

    def __init__(self, include_dir: str | Path, prefix: str = "deep_ep",
                 read: Callable[[Path], bytes] | None = None) -> None:
        self.include_dir = Path(include_dir)
        self.prefix = prefix.encode()
        self._read = read or (lambda p: p.read_bytes())
        self._cache: dict[str, str | None] = {}

    def includes(self, code: bytes) -> list[str]:
        names = []
        for match in _INCLUDE.finditer(code):
            text = match.group(0)
            if text.startswith(b"#include <") and text.endswith(b">") and text[10:11] != b" " and text[-2:-1] != b" ":
                name = text[10:-1]
                if name.startswith(self.prefix):
                    names.append(name.decode("utf-8", errors="surrogateescape"))
            else:
                raise HeaderError(f"non-standard include: {text.decode(errors='replace')}")
        return names

    def hash_value(self, code: str | bytes, exclude_code: bool = True) -> str:
        raw = code.encode("utf-8") if isinstance(code, str) else bytes(code)
        text = "".join(self.hash_path(name) + "$" for name in self.includes(raw))
        if not exclude_code:
            text += "#" + hex_digest21(raw)
        return hex_digest21(text)

    def hash_path(self, name: str) -> str:
        if name in self._cache:
            value = self._cache[name]
            if value is None:
                raise HeaderError(f"circular include may occur: {name}")
            return value
        path = self.include_dir / name
        raw = self._read(path)
        self._cache[name] = None
        value = self.hash_value(raw, exclude_code=False)
        self._cache[name] = value
        return value


def with_include_hash(generated: str, includes: IncludeHasher21) -> str:
    """The code DeepEP 2.1 writes to kernel.cu: its includes' hash line, then the generated source."""
    return f"{_HEADER}{includes.hash_value(generated)}\n{generated}"


def flags21(*, arch: str, nccl_root: str, library_include: str, cpp_standard: int = 20,
            num_topk_idx_bits: int = 0) -> str:
    """``Compiler`` + ``NVCCCompiler`` flags with no debug environment variables set.

    ``arch`` as ``sm_90a`` or ``90a``; ``num_topk_idx_bits`` only when ``EP_NUM_TOPK_IDX_BITS`` was set.
    """
    arch = arch[3:] if arch.startswith("sm_") else arch
    flags = (f"-std=c++{cpp_standard} --diag-suppress=39,161,174,177,186,940,3012 "
             "--ptxas-options=--register-usage-level=10")
    flags += f" -I {nccl_root}/include"
    if num_topk_idx_bits:
        flags += f" -DEP_NUM_TOPK_IDX_BITS={num_topk_idx_bits}"
    return (f"{flags} -I{library_include} --gpu-architecture=sm_{arch} "
            "--compiler-options=-fPIC,-O3,-fconcepts,-Wno-deprecated-declarations,-Wno-abi "
            "-O3 --expt-relaxed-constexpr --expt-extended-lambda")


def cache_key21(name: str, code: str, flags: str, nvcc_major: int, nvcc_minor: int) -> str:
    """The digest of ``kernel.<name>.<digest>``; ``code`` is kernel.cu's full text (with its hash line)."""
    return hex_digest21(f"{name}$$NVCC{nvcc_major}.{nvcc_minor}$${flags}$${code}")


def entry_name21(name: str, digest: str) -> str:
    return f"kernel.{name}.{digest}"


def nvcc_command21(nvcc: str | Path, build_dir: str | Path, flags: str) -> str:
    """The shell command DeepEP 2.1 runs (from an empty directory)."""
    build_dir = Path(build_dir)
    return f"{nvcc} {build_dir / 'kernel.cu'} -cubin -o {build_dir / 'kernel.cubin'} {flags}"


def parse_entry_name21(dirname: str) -> tuple[str, str] | None:
    """``kernel.<name>.<digest>`` -> ``(name, digest)``, else None."""
    match = re.fullmatch(r"kernel\.(\w+)\.([0-9a-f]{32})", dirname)
    return (match.group(1), match.group(2)) if match else None
