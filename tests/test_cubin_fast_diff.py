"""The cubin reader's names-as-bytes fast path (session 6) against the reader it replaced, on every real cubin
and on random damage to them: the same answer (the same verdict, or the same "ask pyelftools")."""

from __future__ import annotations

import random
import struct
from pathlib import Path

from jitcache.store import elf
from jitcache.store.elf import (_PLAIN_TYPES, _SHDR, _SHDR_FIELDS, _SHDR_USED, _SHF_COMPRESSED, _SHT_NOBITS,  # noqa: F401
                                _STT_FUNC, _SYM, _SYM_USED, _SYMTAB_TYPES, _is_ignored)

DATA = Path(__file__).parent / "data"


# The reader as it was before (jitcache/store/elf.py at a14ce04), kept here as the reference.
def _old_fast_sections(data: bytes) -> tuple[bool, list[str], bytes] | None:
    """What :func:`_pyelftools_sections` returns, read with struct; ``None`` for anything unusual.

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



def _cubins() -> list[bytes]:
    return [p.read_bytes() for p in sorted(DATA.rglob("*.cubin"))]


def _answer(fn, data: bytes):
    try:
        return ("ok", fn(data))
    except Exception as exc:  # noqa: BLE001 - both must fail alike
        return ("raised", type(exc).__name__)


def test_fast_path_equals_the_old_reader_on_real_cubins():
    blobs = _cubins()
    assert len(blobs) > 20
    for data in blobs:
        assert elf._fast_sections(data) == _old_fast_sections(data)
        assert elf._fast_sections(data) is not None


def test_fast_path_equals_the_old_reader_on_damaged_cubins():
    rng = random.Random(16)
    blobs = _cubins()
    for _ in range(3000):
        data = bytearray(rng.choice(blobs))
        shoff = struct.unpack_from("<Q", data, 40)[0]
        for _ in range(rng.randint(1, 4)):
            where = rng.random()
            if where < 0.4 and shoff + 64 < len(data):  # a section header field
                pos = rng.randrange(shoff, min(len(data), shoff + 64 * 20))
            elif where < 0.6:  # a byte made non-ASCII or NUL in some string table
                pos = rng.randrange(len(data))
                data[pos] = rng.choice((0, 0x80, 0xFF, ord("."), ord("a")))
                continue
            else:
                pos = rng.randrange(len(data))
            data[pos] = rng.randrange(256)
        blob = bytes(data)
        assert _answer(elf._fast_sections, blob) == _answer(_old_fast_sections, blob)


def test_non_ascii_names_take_the_decoding_reader():
    """Two different bytes decode to the same replacement character: names with such bytes are compared
    as the old reader compared them (decoded)."""
    data = bytearray(_cubins()[0])
    shoff = struct.unpack_from("<Q", data, 40)[0]
    shstrndx = struct.unpack_from("<H", data, 62)[0]
    off, size = _SHDR_USED.unpack_from(data, shoff + 64 * shstrndx)[3:5]
    table = bytes(data[off:off + size])
    at = table.find(b".text.")
    assert at >= 0
    data[off + at + 6] = 0xFF
    blob = bytes(data)
    assert elf._fast_sections(blob) == _old_fast_sections(blob)
