"""The DeepEP runtime boundary: the bucketed dispatcher and its miss guard (``install()`` is :mod:`.install`).

DeepEP 2.5 (``deep_ep.EPBuffer``, also shipped as ``deep_ep_v25``) and DeepEP
2.1 (``deep_ep.ElasticBuffer``) share the dispatch/combine shape::

    buf.dispatch(x, topk_idx=, topk_weights=, num_experts=, num_max_tokens_per_rank=None,
                 expert_alignment=, num_sms=0, ..., handle=None, do_cpu_sync=None, do_expand=False, ...)
        -> (recv_x, recv_topk_idx, recv_topk_weights, handle, event)
    buf.combine(x, handle, topk_weights=None, ...) -> (combined_x, combined_topk_weights, event)

Every distinct ``num_max_tokens_per_rank`` is a new JIT-compiled kernel, so
the dispatcher replaces it (only for ``do_expand=False`` without a cached
handle) by the policy's bucket and touches nothing else. Nothing here imports
``deep_ep`` or ``torch`` at module import: buffers are recognised by class
name, and the DeepEP modules are only imported by
:func:`jitcache.runtime.install.install` when it is not told which classes to
patch.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from jitcache.adapters.base import original_dispatch
from jitcache.adapters.registry import buffer_api
from jitcache.errors import ColdVariantError, UsageError
from jitcache.planning.buckets import BucketPolicy
from jitcache.planning.profiles import Profile, load_profile
from jitcache.runtime.calls import _VLLM_FORWARD_CONTEXT, _name_arguments, local_num_tokens, vllm_dp_num_tokens
from jitcache.runtime.metrics import enable as enable_metrics
from jitcache.runtime.stats import DispatchStats, register_for_flush
from jitcache.store.deepep_cache import jit_cache_roots, warm_buckets_from_cache

__all__ = [
    "BucketedDispatcher",
    "local_num_tokens",
    "vllm_dp_num_tokens",
    "warm_buckets_from_cache",
]

log = logging.getLogger("jitcache.deepep")

#: The positional parameters both APIs share, in order, after ``x``.
_SHARED_POSITIONAL = ("topk_idx", "topk_weights", "cumulative_local_expert_recv_stats", "num_experts",
                      "num_max_tokens_per_rank", "expert_alignment", "num_sms", "num_qps")
_NMAX_POSITION = _SHARED_POSITIONAL.index("num_max_tokens_per_rank")
#: Caps up to this get a precomputed bucket table (~0.5 MiB at most).
_TABLE_MAX = 1 << 16
_NUM_SMS_POSITION = _SHARED_POSITIONAL.index("num_sms")


# -- detection --------------------------------------------------------------------------------


def _as_policy(policy_or_profile: BucketPolicy | Profile | str | os.PathLike) -> tuple[BucketPolicy, Profile | None]:
    if isinstance(policy_or_profile, BucketPolicy):
        return policy_or_profile, None
    profile = load_profile(policy_or_profile)  # a Profile passes through unchanged
    return profile.policy, profile


class BucketedDispatcher:
    """Wraps a DeepEP buffer so that decode dispatches use the bucket policy and never JIT unnoticed.

    ``policy`` is a :class:`BucketPolicy` or a :class:`Profile` (or its name).
    ``warm`` says which buckets are compiled: a :class:`~jitcache.warm.live.WarmupReport`,
    an iterable of bucket values, or ``None`` for a scan of DeepEP's cache
    directory (matched against the profile when there is one). A dispatch to a
    bucket outside that set is a miss: logged once per bucket and counted; with
    ``strict=True`` it raises :class:`ColdVariantError` before DeepEP is called.

    With a profile whose ``[deep_ep] num_sms`` is set, a dispatch that leaves
    ``num_sms`` at 0 (DeepEP's "choose for me", a bandwidth model at EP>1) gets
    the profile's value: ``num_sms`` is a template argument, and the warmup
    compiled the kernels for that value.
    """

    def __init__(self, buffer: Any, policy: BucketPolicy | Profile | str, strict: bool = False,
                 warm: Any = None, *, stats: DispatchStats | None = None, relocate: bool = False,
                 _target: Any = None) -> None:
        self.buffer = buffer
        self.api = buffer_api(buffer)
        self.policy, self.profile = _as_policy(policy)
        self.strict = bool(strict)
        self.num_sms = self.profile.deep_ep.num_sms if self.profile is not None else 0
        self._dispatch = _target if _target is not None else original_dispatch(buffer)
        self._guard: Any = None            # NameGuard: warm buckets per call signature, by entry names
        self._by_signature: dict[tuple, set[int]] = {}
        self._relocate = relocate
        self._warm = set(self._resolve_warm(warm))
        self._warned: set[int] = set()
        self._lock = threading.Lock()
        # strict: the ranks agree on one warm set at the first dispatch (see _agree_on_warm_buckets)
        self._agree_pending = self.strict and self._guard is None  # a name guard agrees per call signature
        self._stats = stats if stats is not None else DispatchStats()
        self._bucket = self.policy.bucket
        # bucket(n) for every n up to the cap, when that is small enough: one list index per dispatch.
        cap = self.policy.max_num_batched_tokens
        self._table = [self._bucket(n) for n in range(cap + 1)] if cap <= _TABLE_MAX else []
        self._table_cap = len(self._table) - 1  # -1: no table, every count goes to bucket()
        self._fast = self._fast_dispatch()
        self.dispatch = self._fast  # type: ignore[method-assign]  # the bound-once hot path, see _fast_dispatch
        register_for_flush(self._stats)
        enable_metrics()  # Prometheus metrics of the same counters, when prometheus_client is installed (once)

    def _resolve_warm(self, warm: Any) -> Iterable[int]:
        if warm is None and self.profile is not None:
            from jitcache.errors import JitCacheError
            from jitcache.runtime.guard import NameGuard

            roots = jit_cache_roots(self.api)
            try:
                self._guard = NameGuard(self.buffer, self.profile, roots)
            except (JitCacheError, OSError, ValueError) as exc:
                log.warning("jitcache: cannot compute the entry names this DeepEP looks up (%s); judging warm "
                            "buckets by the parameters parsed from cached sources, which does not prove DeepEP "
                            "will find them", exc)
            else:
                if self._relocate:
                    self._relocate_shipped(roots)
                return ()
        if warm is None:
            return warm_buckets_from_cache(self.api, jit_cache_roots(self.api), self.profile)
        buckets = getattr(warm, "warm_buckets", None)
        if callable(buckets):  # a WarmupReport
            return buckets()
        return (int(b) for b in warm)

    # -- what the dispatcher knows ------------------------------------------------------------

    def _relocate_shipped(self, roots: tuple[Path, ...]) -> None:
        """Entries built for other install paths, published under this DeepEP's names (no compile)."""
        from jitcache.errors import JitCacheError
        from jitcache.planning.variants import plan
        from jitcache.store.relocate import relocate_for_plan

        guard = self._guard
        try:
            result = relocate_for_plan(roots[0], guard.serving, plan(guard.profile), roots=roots)
        except (JitCacheError, OSError, ValueError) as exc:
            log.warning("jitcache: could not relocate shipped entries into %s: %s", roots[0], exc)
            return
        if result.published:
            log.info("jitcache: relocated %d entries to the names %s looks up", len(result.published),
                     guard.serving.describe())

    def _warm_for(self, x: Any, args: tuple, kwargs: dict) -> set[int]:
        """The warm buckets of this call's signature (computed once per distinct signature)."""
        n = len(args)
        key = (isinstance(x, tuple), args[5] if n > 5 else kwargs.get("expert_alignment"), kwargs.get("do_cpu_sync"),
               args[6] if n > 6 else kwargs.get("num_sms", 0), args[3] if n > 3 else kwargs.get("num_experts"))
        warm = self._by_signature.get(key)
        if warm is None:
            with self._lock:
                warm = self._by_signature.get(key)
                if warm is None:
                    warm = self._judge(self._guard.signature(x, *key[1:]))
                    if self.strict:
                        warm = self._agree_on(warm)
                    self._by_signature[key] = warm
        return warm

    def _judge(self, signature: tuple) -> set[int]:
        """The name guard's verdict for one call signature; what the cache scan says if it cannot render that
        call's kernels (a GPU fact the profile lacks): the serving path must never fail on the guard itself."""
        from jitcache.errors import JitCacheError

        try:
            return self._guard.warm_buckets(signature)
        except (JitCacheError, OSError, ValueError) as exc:
            log.warning("jitcache: cannot name the kernels of a dispatch %s (%s); judging its warm buckets by the "
                        "parameters parsed from cached sources", signature, exc)
            return set(warm_buckets_from_cache(self.api, self._guard.roots, self.profile))

    @property
    def warm_buckets(self) -> frozenset[int]:
        """Warm buckets: with a name guard, for the call the profile describes (decode, its dtype and settings)."""
        if self._guard is not None:
            key = ("profile",)
            if key not in self._by_signature:
                self._by_signature[key] = self._judge(self._guard.profile_signature())
            return frozenset(self._by_signature[key])
        return frozenset(self._warm)

    def stats(self):
        """A frozen snapshot of this dispatcher's counters (:class:`~jitcache.runtime.stats.StatsSnapshot`)."""
        return self._stats.snapshot()

    def bucket_for(self, x: Any, num_tokens_across_dp: Any = None, requested: Any = None) -> tuple[int, int]:
        """``(bucket, num_tokens)`` for a dispatch.

        The DP list wins (``max`` over DP ranks, the same on every rank). Else an
        explicit integer ``num_max_tokens_per_rank`` from the caller (a framework
        that passes the raw DP-padded size, as vLLM did before its fix). Else the
        local row count, which is DP-uniform only at EP1 or with DP padding.
        """
        try:
            if num_tokens_across_dp is not None:
                values = num_tokens_across_dp.tolist() if hasattr(num_tokens_across_dp, "tolist") else num_tokens_across_dp
                values = list(values)
                return self.policy.for_dp(values), (max(int(v) for v in values) if values else 0)
            if requested is not None and not isinstance(requested, bool):
                # An upper bound from the caller (vLLM's power of two of the DP-padded size, which it does
                # not clamp: a 6144 cap would get 8192): never beyond the buffer's capacity.
                count = min(int(requested), self.policy.max_num_batched_tokens)
            else:
                count = local_num_tokens(x)
            return self.policy.bucket(count), count
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    # -- DeepEP's API -------------------------------------------------------------------------

    def dispatch(self, x: Any, *args: Any, num_tokens_across_dp: Any = None, **kwargs: Any) -> Any:
        """DeepEP's ``dispatch`` with ``num_max_tokens_per_rank`` bucketed; returns DeepEP's result as is.

        Without ``num_tokens_across_dp``, inside a vLLM forward pass the count
        comes from vLLM's forward context (:func:`vllm_dp_num_tokens`), bounded
        by the caller's own ``num_max_tokens_per_rank``: so a policy with
        ``steps_per_octave > 1`` refines vLLM's power of two.
        """
        return self._fast(x, *args, num_tokens_across_dp=num_tokens_across_dp, **kwargs)

    def _fast_dispatch(self) -> Callable[..., Any]:
        """:meth:`dispatch` for this instance, with everything it reads bound once (``__init__`` installs it
        as the instance's ``dispatch``): this runs once per layer per step, in ~1 us on the 2-core machine.

        The decode call as frameworks make it (keywords only, no DP list) is handled inline; positional
        arguments, a DP list, prefill and cached handles take :meth:`_dispatch_general`.
        """
        general = self._dispatch_general
        inner = self._dispatch
        table, table_cap, bucket_of = self._table, self._table_cap, self._bucket
        max_tokens = self.policy.max_num_batched_tokens
        num_sms = self.num_sms
        warm_for = self._warm_for if self._guard is not None else None
        local = self._stats._local  # this thread's counters (see DispatchStats)
        record = self._stats.record
        modules = sys.modules

        def dispatch(x: Any, *args: Any, num_tokens_across_dp: Any = None, **kwargs: Any) -> Any:
            if self._agree_pending:
                self._agree_on_warm_buckets()
            get = kwargs.get
            if args or num_tokens_across_dp is not None or get("do_expand") or get("handle") is not None:
                return general(x, args, num_tokens_across_dp, kwargs)
            if num_sms and not get("num_sms"):
                kwargs["num_sms"] = num_sms
            requested = get("num_max_tokens_per_rank")
            if _VLLM_FORWARD_CONTEXT in modules:
                forward = vllm_dp_num_tokens()
                if forward is not None:
                    if requested is None or isinstance(requested, bool) or int(requested) >= forward:
                        requested = forward
            try:
                if requested is None:
                    count = (x[0] if isinstance(x, tuple) else x).shape[0]
                elif requested is True or requested is False:
                    count = local_num_tokens(x)
                else:
                    # An upper bound from the caller: never beyond the buffer's capacity (see bucket_for).
                    count = min(int(requested), max_tokens)
                if count.__class__ is not int:
                    count = int(count)
                bucket = table[count] if 0 <= count <= table_cap else bucket_of(count)
            except (AttributeError, IndexError, TypeError):
                local_num_tokens(x)  # raises the UsageError naming x's type
                raise
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            kwargs["num_max_tokens_per_rank"] = bucket
            warm = self._warm if warm_for is None else warm_for(x, (), kwargs)
            if bucket in warm:
                result = inner(x, **kwargs)
                try:  # DispatchStats.record, inlined: this thread's own counters, no lock
                    counts = local.counts
                    counts.hits[bucket] += 1
                    counts.rows[bucket] += count
                except (AttributeError, IndexError):  # this thread's first call, or a bucket past its lists
                    record(bucket, count)
                return result
            self._on_cold(bucket, warm)
            result = inner(x, **kwargs)
            with self._lock:
                warm.add(bucket)  # DeepEP compiled it just now: warn and count it once
            record(bucket, count, True)
            return result

        dispatch.__doc__ = BucketedDispatcher.dispatch.__doc__
        return dispatch

    def _dispatch_general(self, x: Any, args: tuple, num_tokens_across_dp: Any, kwargs: dict) -> Any:
        """:meth:`dispatch` with positional arguments, a DP list, or a pass-through (prefill, cached handle)."""
        if len(args) > len(_SHARED_POSITIONAL):
            # Beyond the shared prefix the two APIs differ: name every argument once (slow, rare).
            kwargs = _name_arguments(self._dispatch, args, kwargs)
            args = ()
        if self.num_sms:
            if len(args) > _NUM_SMS_POSITION:
                if not args[_NUM_SMS_POSITION]:
                    args = args[:_NUM_SMS_POSITION] + (self.num_sms,) + args[_NUM_SMS_POSITION + 1:]
            elif not kwargs.get("num_sms"):
                kwargs["num_sms"] = self.num_sms
        if kwargs.get("do_expand", False) or kwargs.get("handle") is not None:
            # Prefill (expanded layout, exact sizes) and cached-handle dispatches keep their value:
            # a cached handle fixes num_max_tokens_per_rank itself.
            self._stats.record_passthrough()
            return self._dispatch(x, *args, **kwargs)
        if len(args) > _NMAX_POSITION:
            requested = args[_NMAX_POSITION]
        else:
            requested = kwargs.get("num_max_tokens_per_rank")
        if num_tokens_across_dp is None:
            forward = vllm_dp_num_tokens()
            if forward is not None:
                if requested is None or isinstance(requested, bool) or int(requested) >= forward:
                    requested = forward
        bucket, count = self.bucket_for(x, num_tokens_across_dp, requested)
        warm = self._warm if self._guard is None else self._warm_for(x, args, kwargs)
        miss = bucket not in warm
        if miss:
            self._on_cold(bucket, warm)
        if len(args) > _NMAX_POSITION:
            args = args[:_NMAX_POSITION] + (bucket,) + args[_NMAX_POSITION + 1:]
        else:
            kwargs["num_max_tokens_per_rank"] = bucket
        result = self._dispatch(x, *args, **kwargs)
        if miss:
            with self._lock:
                warm.add(bucket)  # DeepEP compiled it just now: warn and count it once
        self._stats.record(bucket, count, miss)
        return result

    def combine(self, *args: Any, **kwargs: Any) -> Any:
        """DeepEP's ``combine``, untouched: the handle carries ``num_max_tokens_per_rank``."""
        return self.buffer.combine(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Everything else (barrier, destroy, get_comm_stream...) is the buffer's own.
        return getattr(self.buffer, name)

    def _agree_on_warm_buckets(self) -> None:
        """Strict mode, first dispatch: every rank of the buffer's group keeps the buckets warm on *all* ranks.

        Each rank scanned its own cache; if one rank refused a bucket another
        found warm, that rank would raise while the others wait inside DeepEP's
        collective dispatch. One all-gather of the warm sets makes the decision
        the same everywhere (buckets are DP-uniform). Never raises: a failed
        exchange keeps this rank's own set and logs it.
        """
        self._agree_pending = False
        common = self._agree_on(self._warm)
        with self._lock:
            self._warm = common

    def _agree_on(self, warm: set[int]) -> set[int]:
        """The buckets of ``warm`` that are warm on every rank of the buffer's group (one all-gather); with a
        name guard, once per call signature, when it is first seen (the ranks dispatch collectively, so they
        see the signatures in the same order)."""
        group = getattr(self.buffer, "group", None)
        from jitcache.warm.collectives import all_gather_bytes, initialized_dist

        dist = initialized_dist()
        if dist is None or group is None:
            return warm
        try:
            if dist.get_world_size(group) <= 1:
                return warm
            gathered = [set(json.loads(blob)) for blob in
                        all_gather_bytes(json.dumps(sorted(warm)).encode(), group)]
        except Exception as exc:  # noqa: BLE001
            log.error("jitcache: could not agree on the warm buckets over the group (%s: %s): this rank keeps "
                      "its own", type(exc).__name__, exc)
            return warm
        common = set.intersection(*gathered)
        if common != warm or any(g != common for g in gathered):
            lacking = {b: [r for r, g in enumerate(gathered) if b not in g] for b in set.union(*gathered) - common}
            log.warning("jitcache: buckets warm on some ranks only are treated as cold on all (strict): %s",
                        ", ".join(f"{b} (cold on rank{'s' if len(r) > 1 else ''} {', '.join(map(str, r))})"
                                  for b, r in sorted(lacking.items())))
        return common

    def _on_cold(self, bucket: int, warm: set[int] | None = None) -> None:
        from jitcache.adapters.serving import jit_seconds_per_bucket

        warm = self._warm if warm is None else warm
        judged = "" if self._guard is None else f", judged by the entry names {self._guard.serving.describe()} looks up"
        if self.strict:
            self._stats.record_refused(bucket)
            raise ColdVariantError(bucket, message=(
                f"num_max_tokens_per_rank={bucket} is not warm (warm buckets: "
                f"{sorted(warm) or 'none'}{judged}): DeepEP would JIT-compile it on the serving path"))
        with self._lock:
            first = bucket not in self._warned
            self._warned.add(bucket)
        if first:
            log.warning("jitcache: num_max_tokens_per_rank=%d is cold: DeepEP %s is JIT-compiling it on the "
                        "serving path (~%g s per bucket); run `jitcache warmup` for this profile", bucket,
                        self.api, jit_seconds_per_bucket(self.api))
