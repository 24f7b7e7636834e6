"""What a runtime will find when it loads a cubin: is it a CUDA ELF, for which arch, with which kernels.

DeepEP loads ``kernel.cubin`` and expects exactly one kernel in it: DeepEP
2.1 counts entry symbols itself and aborts the process on any other count
(``EP_HOST_ASSERT``), DeepJIT (2.5) asks the driver
(``cuLibraryGetKernelCount``) and panics likewise. A truncated or foreign
file fails earlier, in the driver. This module finds all of that without a
GPU, from the ELF alone (pyelftools).

Facts used (checked on cubins from nvcc 13.0):

- ``e_machine`` is ``EM_CUDA`` (190).
- The SM number is in ``e_flags``: bits 8-15 for ELF ABI version 8 (CUDA
  12.8+ cubins, e.g. ``0x6005a04`` for sm_90), bits 0-7 for older ones.
  The ``a``/``f`` suffix is not in ``e_flags``; it is read from ptxas's
  command line recorded in ``.note.nv.tkinfo`` (``-arch sm_90a``).
- A kernel entry is an ``STT_FUNC`` symbol defined in its own section
  ``.text.<symbol>``; a non-inlined device function called from a kernel
  lives in its caller's section under another name. DeepEP ignores
  ``vprintf``, ``__instantiate_kernel``, ``__internal*`` and
  ``__assertfail`` when it counts.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EM_CUDA", "CubinInfo", "InvalidCubin", "arch_problem", "entry_symbol_problem", "normalize_arch",
           "read_cubin"]

EM_CUDA = 190
_ELF_MAGIC = b"\x7fELF"
_IGNORED_SYMBOLS = ("vprintf", "__instantiate_kernel", "__assertfail")
_IGNORED_PREFIXES = ("__internal",)
_ARCH_IN_TKINFO = re.compile(rb"-arch[ =](sm_\d+[af]?)")
_PTXAS_RELEASE = re.compile(rb"release (\d+\.\d+), V([\d.]+)")


class InvalidCubin(ValueError):
    """The file is not a loadable CUDA ELF; ``reason`` says why in a few words."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class CubinInfo:
    path: str
    size: int
    abi_version: int
    sm: int
    arch: str                  # "sm_90a" when ptxas recorded the suffix, else "sm_90"
    ptxas_version: str | None  # "13.0.88"
    entry_symbols: tuple[str, ...]


def _header(data: bytes, path: Path) -> tuple[int, int, int]:
    """(abi_version, e_machine, e_flags) from the raw header, checked before pyelftools sees the file."""
    if len(data) < 64:
        raise InvalidCubin(path, f"too short for an ELF header ({len(data)} bytes)")
    if data[:4] != _ELF_MAGIC:
        raise InvalidCubin(path, "not an ELF file (bad magic)")
    if data[4] != 2:
        raise InvalidCubin(path, "not a 64-bit ELF")
    endian = "<" if data[5] == 1 else ">"
    machine = struct.unpack_from(endian + "H", data, 18)[0]
    flags = struct.unpack_from(endian + "I", data, 48)[0]
    return data[8], machine, flags


def _sm_from_flags(abi_version: int, flags: int) -> int:
    return (flags >> 8) & 0xFF if abi_version >= 8 else flags & 0xFF


def _is_ignored(name: str) -> bool:
    return name in _IGNORED_SYMBOLS or name.startswith(_IGNORED_PREFIXES)


def read_cubin(path: str | Path) -> CubinInfo:
    """Parse a cubin; raises :class:`InvalidCubin` when a CUDA driver could not load it."""
    from io import BytesIO

    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    from .reading import read_bytes  # never a use: DeepEP 2.1's LRU clock is the cubin's atime

    path = Path(path)
    try:
        data = read_bytes(path)
    except OSError as exc:
        raise InvalidCubin(path, f"unreadable ({exc.strerror})") from None
    abi_version, machine, flags = _header(data, path)
    if machine != EM_CUDA:
        raise InvalidCubin(path, f"ELF for machine {machine}, not CUDA ({EM_CUDA})")
    sm = _sm_from_flags(abi_version, flags)
    if sm == 0:
        raise InvalidCubin(path, f"no SM arch in e_flags ({flags:#x})")
    try:
        elf = ELFFile(BytesIO(data))
        sections = {section.name: section for section in elf.iter_sections()}
        section_names = [section.name for section in elf.iter_sections()]
        entries = []
        for section in sections.values():
            if not isinstance(section, SymbolTableSection):
                continue
            for symbol in section.iter_symbols():
                if symbol["st_info"]["type"] != "STT_FUNC" or _is_ignored(symbol.name):
                    continue
                index = symbol["st_shndx"]
                if not isinstance(index, int) or index >= len(section_names):
                    continue  # undefined (an extern such as vprintf) or a special index
                if section_names[index] == f".text.{symbol.name}":
                    entries.append(symbol.name)
        tkinfo = sections[".note.nv.tkinfo"].data() if ".note.nv.tkinfo" in sections else b""
    except (ELFError, struct.error, ValueError, KeyError, IndexError, OSError, UnicodeDecodeError) as exc:
        raise InvalidCubin(path, f"damaged ELF ({exc})") from None
    if not sections.get(".symtab"):
        raise InvalidCubin(path, "no symbol table")
    arch = f"sm_{sm}"
    if (match := _ARCH_IN_TKINFO.search(tkinfo)) and match.group(1).decode().rstrip("af") == arch:
        arch = match.group(1).decode()
    release = _PTXAS_RELEASE.search(tkinfo)
    return CubinInfo(path=str(path), size=len(data), abi_version=abi_version, sm=sm, arch=arch,
                     ptxas_version=release.group(2).decode() if release else None,
                     entry_symbols=tuple(sorted(set(entries))))


def entry_symbol_problem(info: CubinInfo) -> str | None:
    """Why DeepEP would abort on this cubin's kernels, or ``None`` if it holds exactly one."""
    count = len(info.entry_symbols)
    if count == 1:
        return None
    if count == 0:
        return "holds no kernel entry symbol (DeepEP expects exactly one)"
    return f"holds {count} kernel entry symbols (DeepEP expects exactly one): {', '.join(info.entry_symbols)}"


_ARCH = re.compile(r"^(?:sm_|compute_)?(\d{2,3})([af]?)$")


def normalize_arch(text: str | None) -> str | None:
    """``"90a"``, ``"sm_90a"``, ``"compute_90a"`` -> ``"sm_90a"``; ``None`` for what is not an arch."""
    if not isinstance(text, str):
        return None
    match = _ARCH.match(text.strip())
    return f"sm_{match.group(1)}{match.group(2)}" if match else None


def arch_problem(info: CubinInfo, expected: str | None, *, source: str) -> str | None:
    """Why a cubin is not for the ``expected`` arch (read from its ELF header, never from a manifest).

    ``source`` says who expects it (``meta.json``, ``--arch``). The SM number
    comes from ``e_flags``; the ``a``/``f`` suffix from ptxas's recorded
    command line, so when ptxas recorded nothing only the number is compared.
    """
    wanted = normalize_arch(expected)
    if wanted is None:
        return None
    if info.ptxas_version is None:  # no ptxas note: the suffix is unknown, compare the SM number
        if f"sm_{info.sm}" == wanted.rstrip("af"):
            return None
    elif info.arch == wanted:
        return None
    return f"its ELF header says {info.arch}, {source} says {wanted}: the driver refuses it or runs the wrong code"
