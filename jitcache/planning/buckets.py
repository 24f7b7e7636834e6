"""The bucket policy: any batch size -> one of a small, fixed set of sizes.

DeepEP compiles one kernel per value of ``num_max_tokens_per_rank``. Passing
the raw batch size compiles a kernel for nearly every step (a recompile
storm); passing nothing sizes the receive buffer to full capacity. vLLM's fix
(PR 46404) rounds the DP-uniform batch size ``max(num_tokens_across_dp)`` up to
a power of two. :class:`BucketPolicy` is that rule as a value: warmup
enumerates :meth:`BucketPolicy.buckets`, the runtime calls
:meth:`BucketPolicy.bucket`, and both therefore agree by construction.

Differences from vLLM's inline rule, on purpose:

- the result is clamped to ``max_num_batched_tokens``: with a cap of 6144,
  vLLM's ``1 << (n - 1).bit_length()`` maps 5000 to 8192, past the buffer's
  capacity; here the cap itself is the last bucket;
- ``steps_per_octave=k`` adds ``k - 1`` geometric steps inside every doubling:
  more variants, fewer padded rows. The worst case padding ratio
  ``bucket(n) / n`` is below 2 for ``k = 1`` and below ``2 ** (1 / k)`` (plus
  rounding to ``alignment``) in general; :attr:`BucketPolicy.max_padding_ratio`
  gives the exact value for a policy.
"""

from __future__ import annotations

import bisect
import math
import operator
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from jitcache.errors import UsageError

__all__ = ["BucketPolicy"]


def _is_pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class BucketPolicy:
    """Maps a token count to the ``num_max_tokens_per_rank`` DeepEP is given.

    ``max_num_batched_tokens`` is the buffer capacity (the cap). ``min_bucket``
    is the smallest value ever returned, ``alignment`` rounds every bucket up
    to a multiple (e.g. 8 to match CUDA-graph sizes), ``steps_per_octave`` adds
    geometric steps between powers of two.
    """

    max_num_batched_tokens: int
    min_bucket: int = 1
    steps_per_octave: int = 1
    alignment: int = 1
    _buckets: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _fast: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cap = _check_int("max_num_batched_tokens", self.max_num_batched_tokens, 1)
        _check_int("min_bucket", self.min_bucket, 1)
        _check_int("steps_per_octave", self.steps_per_octave, 1)
        _check_int("alignment", self.alignment, 1)
        if self.min_bucket > cap:
            raise UsageError(f"min_bucket={self.min_bucket} exceeds max_num_batched_tokens={cap}")
        object.__setattr__(self, "_buckets", self._enumerate())
        # Pure powers of two: bucket(n) is a bit trick, no search.
        fast = self.steps_per_octave == 1 and _is_pow2(self.min_bucket) and _is_pow2(self.alignment)
        object.__setattr__(self, "_fast", fast)

    # -- construction -------------------------------------------------------------------------

    def _enumerate(self) -> tuple[int, ...]:
        cap, k, align = self.max_num_batched_tokens, self.steps_per_octave, self.alignment
        values: set[int] = set()
        exponent = 0
        while (1 << exponent) < cap * 2:
            base = 1 << exponent
            for step in range(k):
                # step 0 is exact; the others are rounded up so that they stay >= the real step.
                raw = base if step == 0 else math.ceil(base * 2.0 ** (step / k))
                value = max(raw, self.min_bucket)
                value = -(-value // align) * align
                values.add(min(value, cap))
            exponent += 1
        values.add(cap)
        return tuple(sorted(v for v in values if v >= min(self.min_bucket, cap)))

    # -- lookups ------------------------------------------------------------------------------

    def buckets(self) -> tuple[int, ...]:
        """Every value :meth:`bucket` can return, ascending. Warmup compiles exactly these."""
        return self._buckets

    def __len__(self) -> int:
        return len(self._buckets)

    def __iter__(self):
        return iter(self._buckets)

    def __contains__(self, value: object) -> bool:
        return value in self._buckets

    def bucket(self, num_tokens: int) -> int:
        """The smallest bucket >= ``num_tokens``; ``0`` (an idle DP rank) gives the smallest bucket.

        Raises :class:`ValueError` naming the value and the cap for a negative,
        non-integer, or too large ``num_tokens``.
        """
        if type(num_tokens) is not int:  # fast path for plain ints, which is every hot call
            num_tokens = self._coerce(num_tokens)
        cap = self.max_num_batched_tokens
        if num_tokens < 0 or num_tokens > cap:
            raise UsageError(
                f"num_tokens={num_tokens} is outside 0..max_num_batched_tokens={cap}"
            )
        if self._fast:
            value = 1 << (num_tokens - 1).bit_length() if num_tokens > 1 else 1
            if value < self.min_bucket:
                value = self.min_bucket
            if value < self.alignment:
                value = self.alignment
            return value if value < cap else cap
        buckets = self._buckets
        return buckets[bisect.bisect_left(buckets, num_tokens)]

    def for_dp(self, num_tokens_across_dp: Sequence[int] | Iterable[int]) -> int:
        """The DP-uniform bucket: ``bucket(max(num_tokens_across_dp))``.

        Every rank of an EP group must pass the same ``num_max_tokens_per_rank``;
        computing it from the maximum over the DP group makes them agree. Accepts a
        list of ints or a 1-D tensor.
        """
        values = num_tokens_across_dp
        if hasattr(values, "tolist"):
            values = values.tolist()
        values = list(values)
        if not values:
            raise UsageError("num_tokens_across_dp is empty: need one token count per DP rank")
        return self.bucket(max(self._coerce(v) for v in values))

    def padding(self, num_tokens: int) -> int:
        """Rows of padding ``bucket(num_tokens) - num_tokens``."""
        return self.bucket(num_tokens) - num_tokens

    @property
    def max_padding_ratio(self) -> float:
        """The exact worst ``bucket(n) / n`` over ``1 <= n <= cap`` (below 2 for pure powers of two)."""
        buckets = self._buckets
        worst = float(buckets[0])  # n = 1 maps to the smallest bucket
        for lower, upper in zip(buckets, buckets[1:]):
            worst = max(worst, upper / (lower + 1))
        return worst

    def to_dict(self) -> dict:
        return {
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "min_bucket": self.min_bucket,
            "steps_per_octave": self.steps_per_octave,
            "alignment": self.alignment,
            "buckets": list(self._buckets),
            "num_buckets": len(self._buckets),
            "max_padding_ratio": self.max_padding_ratio,
        }

    def _coerce(self, value: object) -> int:
        if isinstance(value, bool) or isinstance(value, float):
            raise UsageError(
                f"num_tokens={value!r} is not an integer (max_num_batched_tokens={self.max_num_batched_tokens})"
            )
        if hasattr(value, "item") and not hasattr(value, "__index__"):
            value = value.item()  # a 0-d tensor
        try:
            return operator.index(value)  # type: ignore[arg-type]  # TypeError below for non-integers
        except TypeError:
            raise UsageError(
                f"num_tokens={value!r} is not an integer (max_num_batched_tokens={self.max_num_batched_tokens})"
            ) from None
