"""The DeepEP adapters' on-disk entry layouts, without the adapters: what a scan needs of each.

A scan of 10,000 entries asks, per entry directory, which layout its name is
(DeepJIT's ``<name>.<32 hex>`` or DeepEP 2.1's ``kernel.<name>.<32 hex>``),
which file holds the compile metadata and which marker commits it. Those are
the adapters' facts (:class:`~jitcache.adapters.base.DeepEPAdapter`'s
``layout``, ``entry_pattern``, ``meta_file``, ``commit_marker``), declared
here once, in the adapters' order, and taken from here by the adapters
(``deepep25.py``, ``deepep21.py``): reading them costs no adapter import
(dataclasses, inspect, tomllib, the planning layer: ~50 ms of a command's
start-up). ``tests/test_adapters.py`` holds them equal to the registry's.
"""

from __future__ import annotations

import re

__all__ = ["DEEPJIT", "DEEP_EP_21", "LAYOUTS", "EntryLayoutRules", "parse_entry_name"]


class EntryLayoutRules:
    """One adapter's entry layout: its store name, directory-name pattern, metadata file and commit marker."""

    __slots__ = ("layout", "entry_pattern", "meta_file", "commit_marker")

    def __init__(self, layout: str, entry_pattern: re.Pattern[str], meta_file: str | None,
                 commit_marker: str | None) -> None:
        self.layout = layout
        self.entry_pattern = entry_pattern
        self.meta_file = meta_file
        self.commit_marker = commit_marker

    def __repr__(self) -> str:
        return f"EntryLayoutRules({self.layout!r})"


#: DeepEP 2.5 (DeepJIT, shared with DeepGEMM): ``<name>.<32 hex>/`` with ``meta.json``, committed by ``.committed``.
DEEPJIT = EntryLayoutRules("deepjit", re.compile(r"^(?P<family>[A-Za-z0-9_]+)\.(?P<key>[0-9a-f]{32})$"),
                           "meta.json", ".committed")
#: DeepEP 2.1: ``kernel.<name>.<32 hex>/``, no metadata, no marker.
DEEP_EP_21 = EntryLayoutRules("deep_ep_2.1", re.compile(r"^kernel\.(?P<family>[A-Za-z0-9_]+)\.(?P<key>[0-9a-f]{32})$"),
                              None, None)
#: In the order of ``registry.ADAPTERS`` (the order a name is tried in).
LAYOUTS: tuple[EntryLayoutRules, ...] = (DEEPJIT, DEEP_EP_21)


def parse_entry_name(dirname: str) -> tuple[EntryLayoutRules, str, str] | None:
    """``(layout, family, digest)`` of a directory name under a DeepEP ``cache/``, else None: what
    ``registry.parse_entry_name`` answers, with the adapter's layout in place of the adapter."""
    for rules in LAYOUTS:
        match = rules.entry_pattern.match(dirname)
        if match is not None:
            return rules, match["family"], match["key"]
    return None
