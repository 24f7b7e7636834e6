"""The vLLM plugin and the dispatcher as vLLM 0.33's DeepEP V2 path drives them.

vLLM cannot run here (it needs CUDA), so: the DeepEP doubles of
``fake_deep_ep`` stand in for DeepEP, packaged as an importable ``deep_ep`` in
a child process (the real ``tokenspeed-deepep`` in this venv does not import
without CUDA); ``fake_vllm`` stands in for ``vllm.forward_context``, shaped
as vLLM's; a ``vllm`` logger with a handler stands in for vLLM's logging
config. The calls are vLLM's: ``dispatch(x=, topk_idx=, topk_weights=,
num_experts=, num_max_tokens_per_rank=<its power of two>, do_expand=False,
do_cpu_sync=False, async_with_compute_stream=False)``. The strict agreement
runs on a real 2-process gloo group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fake_deep_ep as fake
from fake_vllm import vllm_forward_context  # noqa: F401 - fixture
from jitcache import BucketPolicy
from jitcache.runtime.dispatcher import BucketedDispatcher, vllm_dp_num_tokens

Rows = fake.Rows
isolated_deep_ep_env = fake.isolated_deep_ep_env  # autouse
TESTS = Path(__file__).resolve().parent
torch = pytest.importorskip("torch")


def vllm_dispatch(buffer, num_tokens, pow2):
    """What vLLM 0.33's DeepEPV2PrepareAndFinalize._do_dispatch passes in decode (CUDA graph) mode."""
    return buffer.dispatch(x=Rows(num_tokens, 256), topk_idx=Rows(num_tokens, 4), topk_weights=Rows(num_tokens, 4),
                           num_experts=16, num_max_tokens_per_rank=pow2, do_expand=False, do_cpu_sync=False,
                           async_with_compute_stream=False)


def vllm_pow2(n):
    return 1 << max(n - 1, 0).bit_length()


# -- the forward context ----------------------------------------------------------------------


def test_the_forward_context_lets_steps_per_octave_refine_vllms_power_of_two(vllm_forward_context):
    policy = BucketPolicy(64, steps_per_octave=2)
    buf = fake.ElasticBuffer(num_max_tokens_per_rank=64, hidden=256, num_topk=4)
    d = BucketedDispatcher(buf, policy, warm=policy.buckets())
    for across in ([3, 5, 2], [17, 1], [33, 40], [1]):
        n = max(across)
        with vllm_forward_context(across):
            assert vllm_dp_num_tokens() == n
            vllm_dispatch(d, across[0], vllm_pow2(n))
        assert buf.calls[-1]["num_max_tokens_per_rank"] == policy.bucket(n) < vllm_pow2(n) or n == 1
    assert [c["num_max_tokens_per_rank"] for c in buf.calls] == [6, 23, 46, 1]
    # Outside a forward pass, or without DP metadata (dp_size 1): vLLM's own number, bucketed.
    assert vllm_dp_num_tokens() is None
    vllm_dispatch(d, 5, 8)
    with vllm_forward_context(None):
        vllm_dispatch(d, 5, 8)
    assert [c["num_max_tokens_per_rank"] for c in buf.calls[-2:]] == [8, 8]
    # An explicit DP list still wins over the context.
    with vllm_forward_context([3]):
        d.dispatch(Rows(3, 256), topk_idx=Rows(3, 4), topk_weights=Rows(3, 4), num_experts=16,
                   num_tokens_across_dp=[12, 3])
    assert buf.calls[-1]["num_max_tokens_per_rank"] == 12


def test_with_sequence_parallelism_vllms_own_number_bounds_the_context(vllm_forward_context):
    # vLLM keeps sp_size on its prepare/finalize object: each EP rank holds ceil(n / sp) rows and vLLM passes
    # pow2(ceil(n / sp)). The context's n is larger; the smaller caller value wins, never below the rows.
    policy = BucketPolicy(64, steps_per_octave=2)
    buf = fake.ElasticBuffer(num_max_tokens_per_rank=64, hidden=256, num_topk=4)
    d = BucketedDispatcher(buf, policy, warm=policy.buckets())
    with vllm_forward_context([9, 4]):
        vllm_dispatch(d, 5, vllm_pow2(5))  # sp_size 2: ceil(9 / 2) = 5 rows, vLLM passes 8
    assert buf.calls[-1]["num_max_tokens_per_rank"] == 8


def test_vllms_unclamped_power_of_two_is_clamped_to_the_buffer_capacity(vllm_forward_context):
    policy = BucketPolicy(48)  # a cap that is not a power of two: vLLM 0.33 would pass 64 for 40 tokens
    buf = fake.ElasticBuffer(num_max_tokens_per_rank=48, hidden=256, num_topk=4)
    d = BucketedDispatcher(buf, policy, warm=policy.buckets())
    vllm_dispatch(d, 40, 64)
    with vllm_forward_context([40, 7]):
        vllm_dispatch(d, 7, 64)
    assert [c["num_max_tokens_per_rank"] for c in buf.calls] == [48, 48]


def test_an_unexpected_context_shape_falls_back_quietly(vllm_forward_context):
    with vllm_forward_context([4]):
        sys.modules["vllm.forward_context"]._forward_context.dp_metadata = object()  # no num_tokens_across_dp_cpu
        assert vllm_dp_num_tokens() is None


# -- the plugin, in processes of their own ----------------------------------------------------

CHILD = textwrap.dedent("""
    import io, json, logging, os, sys
    sys.path.insert(0, {tests!r})
    # vLLM's logging config: handlers on the "vllm" logger, which does not propagate; nothing on the root.
    vllm_log = io.StringIO()
    handler = logging.StreamHandler(vllm_log)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("vllm")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    steps = {steps!r}
    result = {{}}
    from jitcache import plugin
    from jitcache.runtime import install as deepep
    if "import-first" in steps:
        import deep_ep
    try:
        plugin.register()
        result["registered"] = True
    except Exception as exc:
        result["registered"] = False
        result["error"] = type(exc).__name__ + ": " + str(exc)
    result["deep_ep_imported_by_register"] = "deep_ep" in sys.modules and "import-first" not in steps
    result["installed_before_import"] = deepep.installed() is not None
    if "break-install" in steps:
        def broken(*args, **kwargs):
            raise RuntimeError("boom")
        deepep.install = broken
    if "import" in steps:
        import deep_ep
        info = deepep.installed()
        result["installed"] = None if info is None else {{"classes": list(info.classes), "strict": info.strict,
                                                          "profile": info.profile}}
    result["log"] = vllm_log.getvalue()
    json.dump(result, open(sys.argv[1], "w"))
""")

FAKE_DEEP_EP = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import fake_deep_ep as _fake

    class ElasticBuffer(_fake.ElasticBuffer):
        pass
""")


def run_plugin_child(tmp_path, steps, **env):
    site = tmp_path / "site"
    (site / "deep_ep").mkdir(parents=True, exist_ok=True)
    (site / "deep_ep" / "__init__.py").write_text(FAKE_DEEP_EP.format(tests=str(TESTS)))
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(TESTS), steps=list(steps)))
    out = tmp_path / "result.json"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("JITCACHE_")}
    full_env.update(PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", JITCACHE_STATS="0",
                    HOME=str(tmp_path / "home"), EP_JIT_CACHE_DIR=str(tmp_path / "dj"), **env)
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, env=full_env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stderr


def test_register_imports_no_deepep_and_installs_when_the_process_imports_it(tmp_path):
    result, _ = run_plugin_child(tmp_path, ["import"], JITCACHE_PROFILE="h200-ep1")
    assert result["registered"] and not result["deep_ep_imported_by_register"]
    assert not result["installed_before_import"]  # an API server or engine core stops here
    assert result["installed"] == {"classes": ["deep_ep.ElasticBuffer"], "strict": False, "profile": "h200-ep1"}
    lines = result["log"].splitlines()
    assert lines == ["INFO jitcache.plugin jitcache: bucketed dispatch installed on deep_ep.ElasticBuffer "
                     "(profile h200-ep1, 14 buckets up to 8192, strict=False)"]


def test_a_process_that_imported_deepep_already_is_installed_at_once(tmp_path):
    result, _ = run_plugin_child(tmp_path, ["import-first"], JITCACHE_PROFILE="h200-ep1", JITCACHE_STRICT="1")
    assert result["registered"] and result["installed_before_import"]


def test_without_a_profile_the_plugin_does_nothing(tmp_path):
    result, stderr = run_plugin_child(tmp_path, ["import"])
    assert result["registered"] and result["installed"] is None and result["log"] == ""


def test_an_unknown_profile_is_one_log_line_and_vllm_keeps_running(tmp_path):
    result, _ = run_plugin_child(tmp_path, ["import"], JITCACHE_PROFILE="no-such-profile")
    assert result["registered"] and result["installed"] is None
    (line,) = result["log"].splitlines()
    assert line.startswith("ERROR jitcache.plugin jitcache: JITCACHE_PROFILE=no-such-profile: no-such-profile: "
                           "no built-in profile of that name; vLLM runs without jitcache (built-in profiles: ")


def test_an_unknown_profile_with_strict_is_an_error_at_start(tmp_path):
    result, _ = run_plugin_child(tmp_path, [], JITCACHE_PROFILE="no-such-profile", JITCACHE_STRICT="1")
    assert not result["registered"]
    assert result["error"] == "ProfileError: no-such-profile: no built-in profile of that name"
    assert "refusing to start" in result["log"]


def test_a_failing_install_never_breaks_vllms_import_of_deepep(tmp_path):
    result, _ = run_plugin_child(tmp_path, ["break-install", "import"], JITCACHE_PROFILE="h200-ep1")
    assert result["installed"] is None  # `import deep_ep` itself succeeded
    assert "could not install on deep_ep (RuntimeError: boom); DeepEP runs without jitcache" in result["log"]


# -- strict: one decision over the group ------------------------------------------------------

RANK = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    import torch.distributed as dist
    import fake_deep_ep as fake
    from jitcache import BucketPolicy
    from jitcache.runtime.dispatcher import BucketedDispatcher
    from jitcache.errors import ColdVariantError

    store, rank, out = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{store}", world_size=2, rank=rank)
    # Each rank's own cache scan found other buckets: rank 1 lacks 8, rank 0 lacks 16.
    warm = [1, 2, 4, 8, 32] if rank == 0 else [1, 2, 4, 16, 32]
    buf = fake.ElasticBuffer(group=dist.group.WORLD, num_max_tokens_per_rank=32, hidden=64, num_topk=2)
    d = BucketedDispatcher(buf, BucketPolicy(32), strict=True, warm=warm)
    decisions = []
    for n in (3, 7, 12, 30):
        try:
            d.dispatch(fake.Rows(n, 64), topk_idx=fake.Rows(n, 2), topk_weights=fake.Rows(n, 2), num_experts=8,
                       num_tokens_across_dp=[n, n])
            decisions.append("dispatched")
        except ColdVariantError as exc:
            decisions.append(f"refused {exc.num_max_tokens_per_rank}")
    json.dump({"decisions": decisions, "warm": sorted(d.warm_buckets), "calls": len(buf.calls)}, open(out, "w"))
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)
""")


def test_strict_refusals_are_the_same_on_every_rank(tmp_path):
    env = {**os.environ, "JITCACHE_STATS": "0", "EP_JIT_CACHE_DIR": str(tmp_path / "dj")}
    outs = [tmp_path / f"rank{r}.json" for r in (0, 1)]
    procs = [subprocess.Popen([sys.executable, "-c", RANK, str(TESTS), str(tmp_path / "store"), str(r), str(outs[r])],
                              env=env) for r in (0, 1)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    ranks = [json.loads(o.read_text()) for o in outs]
    assert ranks[0] == ranks[1]
    assert ranks[0]["decisions"] == ["dispatched", "refused 8", "refused 16", "dispatched"]
    assert ranks[0]["warm"] == [1, 2, 4, 32] and ranks[0]["calls"] == 2
