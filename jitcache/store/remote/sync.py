"""Push local entries to a remote store and pull them back: conditional writes out, full validation in.

Push: each healthy entry becomes a one-entry bundle (:func:`..bundle.write_bundle`:
files with size and sha256, and the contents fingerprint ``export`` writes,
:func:`..fingerprint.contents_fingerprint`: per DeepEP version its nvcc,
headers digest and archs, nothing about backends it does not hold) written
with create-if-absent, so two nodes pushing the same entry never overwrite
each other: the first object stays, the second push counts it as
``present``. Then the profile's index is merged by compare-and-swap; it lists
each object's sha256 and its ``kernel.cu``'s.

Pull: the names are those the serving DeepEP computes (given by the caller,
e.g. the AOT warmup's jobs, or computed here from the plan and
``serving``), else every entry the profile's index lists. A name the store
does not hold is looked up by its kernel's source (:func:`.layout.resolve_objects`):
an entry built for other install paths. Objects are downloaded into a
private folder under the cache's ``tmp/`` (an object listed in the index
must match the index's sha256), then imported with
:func:`..bundle.import_bundles`, i.e. the very checks and atomic publish of
``jitcache import``: member paths, sizes, per-file sha256, the fingerprint
compared as ``import`` compares it, cubin ELF and the target arch, one
rename per entry with DeepJIT's marker written last. A pull killed at any
point leaves only whole entries. An object that fails a check is refused on
its own (reported, not published); the others are still pulled.

Then, as ``import`` does, entries pulled under other names are relocated
(:func:`..relocate.relocate_entries`) to the names ``serving`` computes:
their own ``kernel.cu`` checked, published by one rename each.
"""

from __future__ import annotations

import hashlib
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from jitcache.adapters.registry import adapter
from jitcache.errors import BundleError, RemoteError

from ..bundle import import_bundles, write_bundle
from ..fingerprint import contents_fingerprint
from ..model import CacheEntry
from ..publish import make_temp_dir, remove_tree
from ..root import CacheRoot
from ..scan import coverage, scan
from .backend import RemoteStore
from .layout import ENTRY_SUFFIX, RemoteEnv, api_of_entry_name, decode_index, encode_index, entry_key, index_key, \
    merge_index, resolve_objects
from .reports import PullReport, PushReport, RemoteProgress

__all__ = ["PullReport", "PushReport", "RemoteProgress", "entry_is_local", "pull", "push"]

#: Objects moved at once: requests to a store are latency-bound, not CPU-bound.
TRANSFER_THREADS = 16
_CAS_ATTEMPTS = 20


def entry_is_local(root: CacheRoot, name: str) -> bool:
    """Whether ``root`` holds a published entry ``name`` (its DeepEP's commit rule: DeepJIT's marker, or both
    files for 2.1)."""
    final = root.deep_ep_dir / "cache" / name
    version = api_of_entry_name(name)
    if version is not None:
        return adapter(version).is_committed(final)
    return (final / "kernel.cu").is_file() and (final / "kernel.cubin").is_file()


def _notify(on_progress: Callable[[RemoteProgress], None] | None, *args: Any) -> None:
    if on_progress is not None:
        on_progress(RemoteProgress(*args))


# -- push -----------------------------------------------------------------------------------------


def _entries_to_push(root: CacheRoot, env: RemoteEnv, plan: Any, names: Iterable[str] | None
                     ) -> tuple[list[CacheEntry], list[tuple[str, str]]]:
    report = scan(root)
    entries = [e for e in report.entries if e.backend == "deep_ep"]
    if names is not None:
        wanted = set(names)
        entries = [e for e in entries if e.name in wanted]
    elif plan is not None:
        cov = coverage(plan, [e for e in entries if e.status == "ok"])
        paths = {p for _, found in cov.present for p in found}
        entries = [e for e in entries if e.path in paths]
    chosen, skipped = [], []
    for entry in entries:
        if getattr(entry, "foreign", False):
            skipped.append((entry.name, "another tool's entry (not a DeepEP kernel): never shipped"))
        elif entry.status == "broken":
            skipped.append((entry.name, "broken: " + "; ".join(p.message for p in entry.problems)[:200]))
        elif api_of_entry_name(entry.name) != env.deep_ep_api:
            skipped.append((entry.name, f"a DeepEP {api_of_entry_name(entry.name)} entry, not {env.deep_ep_api}"))
        elif entry.arch != env.arch:
            skipped.append((entry.name, f"cubin for {entry.arch}, not {env.arch}"))
        else:
            chosen.append(entry)
    return chosen, skipped


def _fingerprint(entry: CacheEntry, env: RemoteEnv) -> dict[str, Any]:
    """The contents fingerprint ``export`` would write for ``entry``; nvcc from the store's key where the
    entry records none (DeepEP 2.1 has no meta.json: the compiling nvcc is the one that keys the store)."""
    fingerprint = contents_fingerprint([entry])
    if not (entry.compiler or "").startswith("nvcc "):
        for facts in (fingerprint["backends"].get("deep_ep") or {}).values():
            facts["nvcc"] = [env.nvcc]
    return fingerprint


def push(root: CacheRoot, remote: RemoteStore, env: RemoteEnv, *, plan: Any = None,
         names: Iterable[str] | None = None,
         on_progress: Callable[[RemoteProgress], None] | None = None) -> PushReport:
    """Push ``root``'s healthy entries (those ``plan`` needs, or those ``names``) and update the plan's index."""
    start = time.perf_counter()
    if remote.read_only:
        remote.check_writable("entries and the index")
    entries, skipped = _entries_to_push(root, env, plan, names)
    profile = None if plan is None else plan.profile.name
    done = [0]

    def one(entry: CacheEntry) -> tuple[str, str, dict[str, Any] | None, int]:
        buffer = io.BytesIO()
        written, vanished, manifest = write_bundle(buffer, [entry], profile=profile,
                                                   fingerprint=_fingerprint(entry, env))
        if not written:
            return entry.name, "vanished", None, 0
        blob = buffer.getvalue()
        source = next((f["sha256"] for f in manifest["entries"][0]["files"] if f["path"] == "kernel.cu"), None)
        key = entry_key(env, entry.name)
        created = remote.put_new(key, blob)
        spec: dict[str, Any] | None
        if created:
            spec = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest(), "source": source}
        else:
            stored = remote.get(key)  # the first pusher's object is the one the index must describe
            spec = None if stored is None else {"size": len(stored), "sha256": hashlib.sha256(stored).hexdigest(),
                                                "source": source}  # same name: same source
        done[0] += 1
        _notify(on_progress, "push", done[0], len(entries), entry.name)
        return entry.name, "pushed" if created else "present", spec, len(blob) if created else 0

    with ThreadPoolExecutor(max_workers=TRANSFER_THREADS, thread_name_prefix="jitcache-push") as pool:
        results = list(pool.map(one, entries))
    pushed = tuple(n for n, s, _, _ in results if s == "pushed")
    present = tuple(n for n, s, _, _ in results if s == "present")
    skipped += [(n, "vanished while being read (pruned?)") for n, s, _, _ in results if s == "vanished"]
    listed = [(n, spec) for n, _, spec, _ in results if spec is not None]
    ikey, count = None, 0
    if plan is not None:
        ikey = index_key(env, plan.profile.name, plan.fingerprint())
        count = _update_index(remote, ikey, plan, env, listed)
    return PushReport(remote.url, env, profile, pushed, present, tuple(skipped),
                      sum(b for _, _, _, b in results), time.perf_counter() - start, ikey, count)






def _update_index(remote: RemoteStore, key: str, plan: Any, env: RemoteEnv,
                  listed: Sequence[tuple[str, dict[str, Any]]]) -> int:
    """Merge ``listed`` into the index at ``key`` by compare-and-swap; returns the entries it lists."""
    for _ in range(_CAS_ATTEMPTS):
        current = remote.get_versioned(key)
        entries = {} if current is None else decode_index(current.data, remote.where(key))
        merged = merge_index(entries, listed)
        if merged is None:
            return len(entries)
        if remote.replace(key, encode_index(plan.profile.name, plan.fingerprint(), env, merged), current):
            return len(merged)
        time.sleep(0.05)  # another pusher won this round: read its index and merge again
    raise RemoteError(f"{remote.where(key)}: index kept changing under {_CAS_ATTEMPTS} attempts to update it",
                      url=remote.url, hint="run the push again")


# -- pull -----------------------------------------------------------------------------------------


def _wanted(env: RemoteEnv, plan: Any, names: Iterable[str] | None,
            sources: dict[str, str] | None, serving: Any, listing: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    """The names to end up with locally -> the sha256 of the kernel.cu each must hold (None: unknown)."""
    if names is not None:
        wanted = {n: (sources or {}).get(n) for n in dict.fromkeys(names)}
    elif plan is not None and serving is not None:
        from jitcache.adapters.serving import planned_entries

        wanted = {e.name: hashlib.sha256(e.kernel_cu.encode()).hexdigest() for e in planned_entries(plan, serving)}
    elif plan is not None:
        wanted = {n: None for n in sorted(listing)}
    else:
        raise RemoteError("pull needs a plan (its index names the entries) or entry names")
    return {n: s for n, s in wanted.items() if api_of_entry_name(n) == env.deep_ep_api}


def pull(root: CacheRoot, remote: RemoteStore, env: RemoteEnv, *, plan: Any = None,
         names: Iterable[str] | None = None, sources: dict[str, str] | None = None, serving: Any = None,
         relocate: bool = True, force: bool = False,
         on_progress: Callable[[RemoteProgress], None] | None = None) -> PullReport:
    """Pull into ``root`` what the serving DeepEP looks up; see the module docstring.

    ``names`` (with ``sources``: name -> sha256 of its kernel.cu) are the
    names to end with; else, with ``serving`` (a
    :class:`jitcache.adapters.serving.ServingDeepEP`), those it computes for
    ``plan``; else every entry ``plan``'s index lists. ``relocate=False``
    publishes what is pulled under the names it was pushed with only.
    """
    start = time.perf_counter()
    timings: dict[str, float] = {}
    ikey, listing, found = None, {}, True
    if plan is not None:
        ikey = index_key(env, plan.profile.name, plan.fingerprint())
        data = remote.get(ikey)
        found = data is not None
        listing = {} if data is None else decode_index(data, remote.where(ikey))
    timings["index"] = time.perf_counter() - start
    wanted = _wanted(env, plan, names, sources, serving, listing)
    timings["names"] = time.perf_counter() - start - timings["index"]
    local = tuple(n for n in wanted if entry_is_local(root, n))
    chosen, unlisted = resolve_objects({n: s for n, s in wanted.items() if n not in local}, listing)
    chosen.update((n, n) for n in unlisted)       # not in the index: the exact name may still be stored
    todo = sorted({o for o in chosen.values() if not entry_is_local(root, o)})
    profile = None if plan is None else plan.profile.name
    fetched: list[tuple[str, Path | None, str | None, int]] = []
    refused: list[tuple[str, str]] = []
    published: list[str] = []
    if todo:
        root.ensure()
        downloads = make_temp_dir(root.deep_ep_dir, kind="pull")  # named by its owner: reclaimed once we are gone
        done = [0]

        def fetch(name: str) -> tuple[str, Path | None, str | None, int]:
            blob = remote.get(entry_key(env, name))
            done[0] += 1
            _notify(on_progress, "pull", done[0], len(todo), name)
            if blob is None:
                return name, None, None, 0
            spec = listing.get(name)
            if spec is not None and (len(blob) != spec["size"] or hashlib.sha256(blob).hexdigest() != spec["sha256"]):
                return name, None, f"object does not match the index's sha256 ({spec['sha256'][:16]}...)", len(blob)
            path = downloads / f"{name}{ENTRY_SUFFIX}"
            path.write_bytes(blob)
            return name, path, None, len(blob)

        try:
            mark = time.perf_counter()
            with ThreadPoolExecutor(max_workers=TRANSFER_THREADS, thread_name_prefix="jitcache-pull") as pool:
                fetched = list(pool.map(fetch, todo))
            timings["download"] = time.perf_counter() - mark
            refused = [(n, why) for n, _, why, _ in fetched if why is not None]
            bundles = {p: n for n, p, _, _ in fetched if p is not None}
            mark = time.perf_counter()
            published = _import_checked(root, remote, env, bundles, refused, force, on_progress)
            timings["verify_publish"] = time.perf_counter() - mark
        finally:
            remove_tree(downloads)
    here = {o for o in chosen.values() if entry_is_local(root, o)}
    failed = dict(refused)
    missing = tuple(n for n, o in chosen.items() if o not in here and o not in failed)
    relocated: tuple[tuple[str, str], ...] = ()
    not_relocated: tuple[tuple[str, str], ...] = ()
    foreign = sorted({o for n, o in chosen.items() if o != n and o in here})
    if serving is not None and relocate and foreign:
        from jitcache.store.relocate import relocate_entries

        mark = time.perf_counter()
        moved = relocate_entries(root.deep_ep_dir, serving, sources=[root.deep_ep_dir / "cache" / o for o in foreign],
                                 arch=env.arch)
        relocated = tuple((n, Path(f).name) for n, f in moved.published)
        not_relocated = tuple((Path(e).name, why) for e, why in moved.refused)
        timings["relocate"] = time.perf_counter() - mark
    return PullReport(remote.url, env, profile, len(wanted), tuple(published), local, missing, tuple(refused),
                      sum(b for _, _, _, b in fetched), time.perf_counter() - start, ikey, found, relocated,
                      not_relocated, None if serving is None else serving.to_dict(),
                      {k: round(v, 4) for k, v in timings.items()})


def _import_checked(root: CacheRoot, remote: RemoteStore, env: RemoteEnv, bundles: dict[Path, str],
                    refused: list[tuple[str, str]], force: bool,
                    on_progress: Callable[[RemoteProgress], None] | None) -> list[str]:
    """Import the downloaded bundles with ``import``'s checks; an object that fails one is refused alone."""
    pending = dict(bundles)
    while pending:
        paths = sorted(pending)
        count = [0]

        def published(name: str) -> None:
            count[0] += 1
            _notify(on_progress, "publish", count[0], len(paths), name)

        try:
            results = import_bundles(root, paths, force=force, target_arch=env.arch,
                                     command=f"jitcache pull {remote.url}", _after_publish=published)
        except BundleError as exc:
            bad = Path(exc.path) if exc.path else None
            if bad not in pending:
                raise
            name = pending.pop(bad)
            reason = exc.message.replace(f"{bad}: ", "").replace(str(bad), remote.where(entry_key(env, name)))
            refused.append((name, reason))
            continue
        out = []
        for result in results:
            out += list(result.published) + list(result.lost_race)
        return out
    return []
