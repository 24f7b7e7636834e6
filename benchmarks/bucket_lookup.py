"""How long `BucketPolicy.bucket(n)` takes in CPython (goal: < 1 microsecond per call).

Measures the pure power-of-two policy (bit arithmetic) and steps_per_octave=2
(binary search), over a fixed pseudo-random stream of batch sizes, best of 7
runs of timeit. Writes benchmarks/results/<machine>/bucket_lookup.json.
"""

from __future__ import annotations

import random
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_facts, write_result  # noqa: E402

from jitcache.planning.buckets import BucketPolicy  # noqa: E402


def measure(policy: BucketPolicy, sizes: list[int], repeat: int = 7) -> float:
    bucket = policy.bucket
    sizes = [n % (policy.max_num_batched_tokens + 1) for n in sizes]
    loop = "for n in sizes: bucket(n)"
    times = timeit.repeat(loop, globals={"sizes": sizes, "bucket": bucket}, number=1, repeat=repeat)
    baseline = timeit.repeat("for n in sizes: pass", globals={"sizes": sizes}, number=1, repeat=repeat)
    return (min(times) - min(baseline)) / len(sizes)


def main() -> None:
    rng = random.Random(0)
    sizes = [rng.randint(0, 8192) for _ in range(200_000)]
    cases = {
        "pow2 cap 8192": BucketPolicy(8192),
        "pow2 cap 6144": BucketPolicy(6144),
        "steps_per_octave=2 cap 8192": BucketPolicy(8192, steps_per_octave=2),
        "alignment=3 cap 8192 (search path)": BucketPolicy(8192, alignment=3),
    }
    results = {}
    for label, policy in cases.items():
        per_call = measure(policy, sizes)
        results[label] = {"ns_per_call": round(per_call * 1e9, 1), "num_buckets": len(policy),
                          "fast_path": policy._fast}
        print(f"{label:40s} {per_call * 1e9:7.1f} ns/call", flush=True)
    path = write_result("bucket_lookup", {"benchmark": "BucketPolicy.bucket per call", "calls": len(sizes),
                                          "goal_ns": 1000, "machine": machine_facts(), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
