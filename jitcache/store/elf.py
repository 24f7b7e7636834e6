"""What a runtime will find when it loads a cubin: is it a CUDA ELF, for which arch, with which kernels.

DeepEP loads ``kernel.cubin`` and expects exactly one kernel in it: DeepEP
2.1 counts entry symbols itself and aborts the process on any other count
(``EP_HOST_ASSERT``), DeepJIT (2.5) asks the driver
(``cuLibraryGetKernelCount``) and panics likewise. A truncated or foreign
file fails earlier, in the driver. This module finds all of that without a
GPU, from the ELF alone (its section table read with struct; pyelftools
for anything unusual).

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
           "parse_cubin", "read_cubin"]

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


def _header(data: bytes, path: str | Path) -> tuple[int, int, int]:
    """(abi_version, e_machine, e_flags) from the raw header, checked before pyelftools sees the file."""
    if len(data) < 64:
        raise InvalidCubin(Path(path), f"too short for an ELF header ({len(data)} bytes)")
    if data[:4] != _ELF_MAGIC:
        raise InvalidCubin(Path(path), "not an ELF file (bad magic)")
    if data[4] != 2:
        raise InvalidCubin(Path(path), "not a 64-bit ELF")
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
    from .reading import read_bytes  # never a use: DeepEP 2.1's LRU clock is the cubin's atime

    path = Path(path)
    try:
        data = read_bytes(path)
    except OSError as exc:
        raise InvalidCubin(path, f"unreadable ({exc.strerror})") from None
    return parse_cubin(data, path)


def parse_cubin(data: bytes, path: str | Path) -> CubinInfo:
    """:func:`read_cubin` of bytes already read.

    The ordinary cubin (64-bit little-endian, a plain section table, in
    bounds) is read directly with :mod:`struct` (:func:`_fast_sections`), ~50x
    faster than pyelftools; anything else takes pyelftools' path, which then
    decides. Both give the same verdict on nvcc's output (pinned by tests).
    """
    abi_version, machine, flags = _header(data, path)
    if machine != EM_CUDA:
        raise InvalidCubin(Path(path), f"ELF for machine {machine}, not CUDA ({EM_CUDA})")
    sm = _sm_from_flags(abi_version, flags)
    if sm == 0:
        raise InvalidCubin(Path(path), f"no SM arch in e_flags ({flags:#x})")
    fast = _fast_sections(data)
    if fast is None:
        has_symtab, entries, tkinfo = _pyelftools_sections(data, Path(path))
    else:
        has_symtab, entries, tkinfo = fast
    if not has_symtab:
        raise InvalidCubin(Path(path), "no symbol table")
    arch = f"sm_{sm}"
    if (match := _ARCH_IN_TKINFO.search(tkinfo)) and match.group(1).decode().rstrip("af") == arch:
        arch = match.group(1).decode()
    release = _PTXAS_RELEASE.search(tkinfo)
    return CubinInfo(path=str(path), size=len(data), abi_version=abi_version, sm=sm, arch=arch,
                     ptxas_version=release.group(2).decode() if release else None,
                     entry_symbols=tuple(sorted(set(entries))))


def _pyelftools_sections(data: bytes, path: Path) -> tuple[bool, list[str], bytes]:
    """(has a .symtab, kernel entry symbols, .note.nv.tkinfo bytes), by pyelftools."""
    from io import BytesIO

    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

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
    return ".symtab" in sections, entries, tkinfo


# ELF64 little-endian layouts: the header fields after e_flags, a section header, a symbol.
_SHDR_FIELDS = struct.Struct("<HHHHHH")   # e_ehsize .. e_shstrndx, at offset 52
_SHDR = struct.Struct("<IIQQQQIIQQ")      # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, ...
_SYM = struct.Struct("<IBBHQQ")           # st_name, st_info, st_other, st_shndx, st_value, st_size
#: The same records with only the fields the verdict reads (fewer ints made per record): a section's
#: sh_name, sh_type, sh_flags, sh_offset, sh_size, sh_link, sh_entsize; a symbol's st_name, st_info, st_shndx.
_SHDR_USED = struct.Struct("<IIQ8xQQI4x8xQ")
_SYM_USED = struct.Struct("<IBxH16x")
_SHT_NOBITS = 8
_SYMTAB_TYPES = (2, 11)                   # SHT_SYMTAB, SHT_DYNSYM
#: Section types the struct reader takes as pyelftools does (-> required sh_entsize, None: any); nvcc
#: writes these and processor-specific ones (0x70000000-0x7fffffff: .nv.info, .nv.constant...). Any
#: other type (pyelftools builds and validates special objects for it) goes to pyelftools.
_PLAIN_TYPES = {0: None, 1: None, 2: 24, 3: None, 4: 24, 7: None, 8: None, 9: 16, 11: 24}
_SHF_COMPRESSED = 0x800
_STT_FUNC = 2


def _fast_sections(data: bytes) -> tuple[bool, list[str], bytes] | None:
    """What :func:`_pyelftools_sections` returns, read with struct; ``None`` for anything unusual.

    "Unusual" (then pyelftools decides): big-endian, extended section
    numbering, a header or table size other than ELF64's, compressed
    sections, or any offset, size or string outside the file.

    nvcc's string tables are ASCII: names are then compared as bytes, and only the kernel entries
    are decoded. A table with any other byte goes to :func:`_fast_sections_general`, which decodes
    every name as pyelftools does (two byte strings can decode to the same text).
    """
    size = len(data)
    if data[5] != 1:
        return None
    shoff = _OFFSET.unpack_from(data, 40)[0]
    _, _, _, shentsize, shnum, shstrndx = _SHDR_FIELDS.unpack_from(data, 52)
    if shentsize != 64 or shnum == 0 or shstrndx >= shnum or shoff + shnum * 64 > size:
        return None
    headers = list(_SHDR_USED.iter_unpack(data[shoff:shoff + shnum * 64]))
    plain = _PLAIN_TYPES
    for _, sh_type, sh_flags, offset, length, _, entsize in headers:
        if sh_flags & _SHF_COMPRESSED:
            return None
        if sh_type in plain:
            if plain[sh_type] not in (None, entsize):
                return None
        elif not 0x70000000 <= sh_type <= 0x7FFFFFFF:
            return None
        if sh_type != _SHT_NOBITS and offset + length > size:
            return None
    names_start = headers[shstrndx][3]
    table = data[names_start:names_start + headers[shstrndx][4]]  # NUL-terminated names inside it
    if not table.isascii():
        return _fast_sections_general(data)
    find = table.find
    names = []
    for header in headers:
        start = header[0]
        stop = find(b"\0", start)
        if stop < 0:  # (also when start is past the table's end)
            return None
        names.append(table[start:stop])
    if b".stab" in names:
        return None  # pyelftools parses a .stab section: let it
    last_by_name = dict(zip(names, range(shnum)))  # pyelftools' dict keeps the last one
    entries = []
    for index in last_by_name.values():
        _, sh_type, _, offset, length, link, entsize = headers[index]
        if sh_type not in _SYMTAB_TYPES:
            continue
        if entsize != 24 or length % 24 or link >= shnum or headers[link][1] != 3:  # SHT_STRTAB
            return None
        strings = data[headers[link][3]:headers[link][3] + headers[link][4]]
        if not strings.isascii():
            return _fast_sections_general(data)
        for st_name, st_info, shndx in _SYM_USED.iter_unpack(data[offset:offset + length]):
            if st_info & 0xF != _STT_FUNC or shndx == 0 or shndx >= shnum:
                continue
            stop = strings.find(b"\0", st_name)
            if stop < 0:
                return None
            name = strings[st_name:stop]
            if names[shndx] == b".text." + name:
                text = name.decode("ascii")
                if not _is_ignored(text):
                    entries.append(text)
    tk = last_by_name.get(b".note.nv.tkinfo")
    tkinfo = b"" if tk is None else (b"" if headers[tk][1] == _SHT_NOBITS else
                                     data[headers[tk][3]:headers[tk][3] + headers[tk][4]])
    return b".symtab" in last_by_name, entries, tkinfo


_OFFSET = struct.Struct("<Q")


def _fast_sections_general(data: bytes) -> tuple[bool, list[str], bytes] | None:
    """:func:`_fast_sections` for string tables that are not all ASCII (names decoded as pyelftools does).

    "Unusual" (then pyelftools decides): big-endian, extended section
    numbering, a header or table size other than ELF64's, compressed
    sections, or any offset, size or string outside the file.
    """
    size = len(data)
    if data[5] != 1:
        return None
    shoff = struct.unpack_from("<Q", data, 40)[0]
    _, _, _, shentsize, shnum, shstrndx = _SHDR_FIELDS.unpack_from(data, 52)
    if shentsize != _SHDR.size or shnum == 0 or shstrndx >= shnum or shoff + shnum * shentsize > size:
        return None
    headers = list(_SHDR_USED.iter_unpack(data[shoff:shoff + shnum * shentsize]))
    plain = _PLAIN_TYPES
    for _, sh_type, sh_flags, offset, length, _, entsize in headers:
        if sh_flags & _SHF_COMPRESSED:
            return None
        if sh_type in plain:
            if plain[sh_type] not in (None, entsize):
                return None
        elif not 0x70000000 <= sh_type <= 0x7FFFFFFF:
            return None
        if sh_type != _SHT_NOBITS and offset + length > size:
            return None
    names_start = headers[shstrndx][3]
    table = data[names_start:names_start + headers[shstrndx][4]]  # NUL-terminated names inside it
    names = []
    for header in headers:
        start = header[0]
        stop = table.find(b"\0", start)
        if stop < 0 or start >= len(table):
            return None
        names.append(table[start:stop].decode("utf-8", errors="replace"))
    if ".stab" in names:
        return None  # pyelftools parses a .stab section: let it
    last_by_name = {name: index for index, name in enumerate(names)}  # pyelftools' dict keeps the last one
    entries = []
    for index in last_by_name.values():
        _, sh_type, _, offset, length, link, entsize = headers[index]
        if sh_type not in _SYMTAB_TYPES:
            continue
        if entsize != _SYM.size or length % entsize or link >= shnum or headers[link][1] != 3:  # SHT_STRTAB
            return None
        strings = data[headers[link][3]:headers[link][3] + headers[link][4]]
        for st_name, st_info, shndx in _SYM_USED.iter_unpack(data[offset:offset + length]):
            if st_info & 0xF != _STT_FUNC or shndx == 0 or shndx >= shnum:
                continue
            stop = strings.find(b"\0", st_name)
            if stop < 0 or st_name >= len(strings):
                return None
            name = strings[st_name:stop].decode("utf-8", errors="replace")
            if names[shndx] == f".text.{name}" and not _is_ignored(name):
                entries.append(name)
    tk = last_by_name.get(".note.nv.tkinfo")
    tkinfo = b"" if tk is None else (b"" if headers[tk][1] == _SHT_NOBITS else
                                     data[headers[tk][3]:headers[tk][3] + headers[tk][4]])
    return ".symtab" in last_by_name, entries, tkinfo


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
