"""jitcache.adapters.num_sms against DeepEP's own ``get_theoretical_num_sms``, for every built-in profile and both versions.

DeepEP's modules do not import without a GPU (``deep_ep._C`` needs CUDA's
libraries), so the test loads the function's *source* from where DeepEP
ships it: DeepEP 2.1 from the installed ``tokenspeed-deepep`` wheel
(``deep_ep/buffers/elastic.py``, the ``aot`` extra), DeepEP 2.5 from the
``deepinfer-ep`` 2.5.0 sdist (``deep_ep/buffers/ep.py``). The method is
compiled without its cache decorator, with DeepEP's own ``align`` (and 2.5's
per-SM bandwidth defaults) beside it, and called on a stand-in object that
carries the attributes it reads (``num_ranks``, the physical and logical
domain sizes, ``prefer_overlap_with_compute``); the two bandwidths are passed
as arguments, the same numbers the profile gives jitcache, and DeepEP's
measuring functions raise if it calls them anyway. The device's SM count comes
from a ``torch.cuda.get_device_properties`` stand-in.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
import tarfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitcache.errors import ProfileError
from jitcache.adapters.num_sms import profile_num_sms, rank_domain, theoretical_num_sms
from jitcache.adapters.registry import adapter
from jitcache.planning.gpus import GPU_DEFAULTS
from jitcache.planning.profiles import builtin_profile_names, load_profile, parse_profile
from jitcache.adapters.render25 import target_facts
from jitcache.adapters.render21 import target_facts21


def _definitions(source: str, names: set[str], class_name: str | None = None) -> list[ast.stmt]:
    tree = ast.parse(source)
    body = tree.body
    if class_name is not None:
        body = next(node for node in body if isinstance(node, ast.ClassDef) and node.name == class_name).body
    found = [node for node in body if isinstance(node, ast.FunctionDef) and node.name in names]
    assert {f.name for f in found} == names, f"DeepEP's source no longer defines {names - {f.name for f in found}}"
    for function in found:
        function.decorator_list = []  # weak_lru / lru_cache: caching only
    return found


def _measured(*_args, **_kwargs):
    raise AssertionError("DeepEP measured a bandwidth: the test must pass it")


def _load(model: str, math_py: str, envs_py: str | None, class_name: str):
    statements = _definitions(model, {"get_theoretical_num_sms"}, class_name) + _definitions(math_py, {"ceil_div", "align"})
    if envs_py is not None:
        statements += _definitions(envs_py, {"get_sm_read_gbs", "get_sm_write_gbs"})
    module = ast.Module(body=statements, type_ignores=[])
    namespace = {"math": math, "os": os, "get_nvlink_gbs": _measured, "get_rdma_gbs": _measured}
    exec(compile(ast.fix_missing_locations(module), f"<DeepEP {class_name}>", "exec"), namespace)  # noqa: S102
    return namespace


@pytest.fixture(scope="module")
def deepep21():
    spec = importlib.util.find_spec("deep_ep")  # does not import it (it needs CUDA)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tokenspeed-deepep (DeepEP 2.1) is not installed: pip install -e '.[aot]'")
    package = Path(next(iter(spec.submodule_search_locations)))
    return _load((package / "buffers" / "elastic.py").read_text(), (package / "utils" / "math.py").read_text(),
                 None, "ElasticBuffer")


@pytest.fixture(scope="module")
def deepep25(deep_ep25_sdist):
    """DeepEP 2.5's Python, read from the pinned sdist (tests/aot_fixtures.py fetches it)."""
    with tarfile.open(deep_ep25_sdist) as tar:
        def read(path):
            return tar.extractfile(f"deepinfer_ep-2.5.0/deep_ep/{path}").read().decode()
        return _load(read("buffers/ep.py"), read("utils/math.py"), read("utils/envs.py"), "EPBuffer")


def deepep_num_sms(namespace, *, num_experts, num_topk, num_device_sms, domain, nvlink_gbs, rdma_gbs,
                   prefer_overlap_with_compute):
    namespace["torch"] = SimpleNamespace(cuda=SimpleNamespace(
        get_device_properties=lambda device: SimpleNamespace(multi_processor_count=num_device_sms)))
    buffer = SimpleNamespace(num_ranks=domain.num_ranks, num_rdma_ranks=domain.num_rdma_ranks,
                             num_nvlink_ranks=domain.num_nvlink_ranks, num_scaleout_ranks=domain.num_scaleout_ranks,
                             num_scaleup_ranks=domain.num_scaleup_ranks,
                             prefer_overlap_with_compute=prefer_overlap_with_compute)
    return namespace["get_theoretical_num_sms"](buffer, num_experts, num_topk, rdma_gbs=rdma_gbs,
                                                nvlink_gbs=nvlink_gbs)


def both(deepep21, deepep25):
    return {"2.1": deepep21, "2.5": deepep25}


@pytest.mark.parametrize("hybrid", [True, False])
@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("name", builtin_profile_names())
def test_every_builtin_profile_gets_deepeps_own_choice(name, overlap, hybrid, deepep21, deepep25):
    profile = load_profile(name)
    profile = replace(profile, deep_ep=replace(profile.deep_ep, num_sms=0, prefer_overlap_with_compute=overlap,
                                               allow_hybrid_mode=hybrid))
    p, m, t = profile.parallel, profile.model, profile.target
    for api, namespace in both(deepep21, deepep25).items():
        expected = deepep_num_sms(namespace, num_experts=m.num_experts, num_topk=m.num_topk,
                                  num_device_sms=t.num_device_sms,
                                  domain=rank_domain(p.ep_size, p.ranks_per_node, hybrid),
                                  nvlink_gbs=t.nvlink_gbs, rdma_gbs=t.rdma_gbs, prefer_overlap_with_compute=overlap)
        assert profile_num_sms(profile, adapter(api).num_sms_rule) == expected, (name, api)
    # ... and that is what the renderers put in the kernels.
    assert target_facts21(profile).num_sms == profile_num_sms(profile, adapter("2.1").num_sms_rule)
    assert target_facts(profile).num_sms == profile_num_sms(profile, adapter("2.5").num_sms_rule)


@settings(max_examples=300, deadline=None)
@given(ranks_per_node=st.sampled_from([1, 2, 4, 8, 16, 72]), nodes=st.sampled_from([1, 2, 4, 8]),
       experts_per_rank=st.sampled_from([1, 2, 4, 8, 32]), num_topk=st.integers(1, 12),
       num_device_sms=st.sampled_from([20, 78, 108, 132, 148, 152]),
       nvlink_gbs=st.floats(10, 2000), rdma_gbs=st.floats(5, 200), hybrid=st.booleans(), overlap=st.booleans())
def test_the_model_equals_deepeps_over_topologies_and_bandwidths(deepep21, deepep25, ranks_per_node, nodes,
                                                                   experts_per_rank, num_topk, num_device_sms,
                                                                   nvlink_gbs, rdma_gbs, hybrid, overlap):
    num_ranks = ranks_per_node * nodes
    num_experts = num_ranks * experts_per_rank
    num_topk = min(num_topk, num_experts)
    domain = rank_domain(num_ranks, ranks_per_node, hybrid)
    facts = dict(num_experts=num_experts, num_topk=num_topk, num_device_sms=num_device_sms, domain=domain,
                 nvlink_gbs=nvlink_gbs, rdma_gbs=rdma_gbs, prefer_overlap_with_compute=overlap)
    for api, namespace in both(deepep21, deepep25).items():
        assert theoretical_num_sms(adapter(api).num_sms_rule, **facts) == deepep_num_sms(namespace, **facts), api


def test_the_readme_profile_at_ep8_and_vllms_defaults():
    # DeepSeek-V3 on 8 x H200: NVLink-bound, 2.1 and 2.5 round differently.
    profile = load_profile("deepseek-v3-ep8")
    assert (profile_num_sms(profile, adapter("2.1").num_sms_rule),
            profile_num_sms(profile, adapter("2.5").num_sms_rule)) == (14, 16)
    # vLLM 0.33 builds the buffer with prefer_overlap_with_compute=False unless VLLM_DEEPEP_V2_PREFER_OVERLAP=1.
    vllm = replace(profile, deep_ep=replace(profile.deep_ep, prefer_overlap_with_compute=False))
    assert profile_num_sms(vllm, adapter("2.1").num_sms_rule) == 64
    # The pinned multi-GPU rig profiles hold what the 2.5 model gives.
    for name in ("h200x2-ep2", "h200x4-ep4"):
        pinned = load_profile(name)
        assert profile_num_sms(pinned, adapter("2.5").num_sms_rule) == pinned.deep_ep.num_sms


def profile_data(**target):
    return {
        "model": {"name": "m", "hidden": 7168, "num_experts": 256, "num_topk": 8},
        "parallel": {"ep_size": 16, "ranks_per_node": 8, "nodes": 2},
        "serving": {"max_num_batched_tokens": 64},
        "target": {"num_device_sms": 132, "num_smem_bytes": 232448, "clock_rate_khz": 1980000,
                   "num_allocated_qps": 129, **target},
    }


def test_a_gpu_name_fills_the_bandwidths_and_explicit_values_win():
    profile = parse_profile(profile_data(gpu="gb200-nvl"), source="x.toml", name="x")
    assert (profile.target.nvlink_gbs, profile.target.rdma_gbs) == (GPU_DEFAULTS["gb200-nvl"].nvlink_gbs, 50.0)
    profile = parse_profile(profile_data(gpu="h200-sxm", rdma_gbs=25), source="x.toml", name="x")
    assert (profile.target.nvlink_gbs, profile.target.rdma_gbs) == (430.3125, 25.0)


@pytest.mark.parametrize("target, field", [({}, "target.nvlink_gbs"), ({"nvlink_gbs": 430.3125}, "target.rdma_gbs")])
def test_missing_bandwidth_at_ep_over_one_names_the_field_and_the_gpu_defaults(target, field):
    profile = parse_profile(profile_data(**target), source="x.toml", name="x")
    with pytest.raises(ProfileError, match=field) as caught:
        target_facts21(profile)
    for name in GPU_DEFAULTS:
        assert name in caught.value.hint
    # One node needs no RDMA figure; EP1 needs neither.
    single = parse_profile({**profile_data(), "parallel": {"ep_size": 8, "ranks_per_node": 8}}, source="x", name="x")
    with pytest.raises(ProfileError, match="target.nvlink_gbs"):
        target_facts(single)
    one = parse_profile({**profile_data(), "parallel": {"ep_size": 1, "ranks_per_node": 1}}, source="x", name="x")
    assert target_facts(one).num_sms == 132


@pytest.mark.parametrize("target, message", [({"gpu": "h300"}, "target.gpu: unknown GPU 'h300'; known: h100-sxm"),
                                             ({"nvlink_gbs": -1.0}, "target.nvlink_gbs: must be >= 0"),
                                             ({"rdma_gbs": True}, "target.rdma_gbs: must be a number")])
def test_bad_bandwidth_fields(target, message):
    with pytest.raises(ProfileError, match=message):
        parse_profile(profile_data(**target), source="x.toml", name="x")


@pytest.mark.parametrize("name", builtin_profile_names())
def test_every_builtin_profile_renders_its_whole_plan_for_both_versions(name):
    # What `jitcache warmup --aot -p NAME` renders before nvcc runs; at EP>1 it used to stop at num_sms = 0.
    from jitcache.adapters.render25 import render_plan
    from jitcache.adapters.render21 import render_plan21
    from jitcache.planning.variants import plan

    the_plan = plan(load_profile(name))
    for kernels, api in ((render_plan(the_plan), "2.5"), (render_plan21(the_plan), "2.1")):
        assert len(kernels) == len(the_plan)
        num_sms = load_profile(name).deep_ep.num_sms or profile_num_sms(the_plan.profile, adapter(api).num_sms_rule)
        dispatch = next(k for k in kernels if k.name.startswith(("dispatch", "hybrid_dispatch")))
        assert f", {num_sms + num_sms % 2}, " in dispatch.source, (api, dispatch.source)


def test_the_cli_names_the_missing_bandwidth_and_leaves_the_cache_alone(tmp_path):
    from cli_helpers import run_cli

    source = (Path(__file__).resolve().parents[1] / "cache_profiles" / "deepseek-v3-ep8.toml").read_text()
    profile = tmp_path / "no-bandwidth.toml"
    profile.write_text("".join(line for line in source.splitlines(keepends=True) if not line.startswith("gpu = ")))
    result = run_cli("warmup", "--aot", "-p", str(profile), "--cache-dir", str(tmp_path / "root"))
    assert result.code == 2, result.stderr
    text = " ".join(result.stderr.split())
    assert f"Error: {profile}: target.nvlink_gbs: is 0 (unknown): at EP8" in text
    assert all(name in text for name in GPU_DEFAULTS)
    assert not (tmp_path / "root").exists()
