"""Live warmup against the DeepEP test double (torch CPU): order, synthetic routing, cache detection, report."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

import fake_deep_ep as fake  # noqa: E402
from jitcache import BucketPolicy, ColdVariantError, UsageError, WarmupError  # noqa: E402
from jitcache.runtime import install as deepep  # noqa: E402
from jitcache.runtime.dispatcher import BucketedDispatcher  # noqa: E402
from jitcache.warm.live import PRECOMPILE, WarmupReport, live_warmup_cli, load_report, warmup  # noqa: E402
from jitcache.planning.profiles import parse_profile  # noqa: E402
from jitcache.planning.variants import plan  # noqa: E402


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("JITCACHE_STATS", "0")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EP_JIT_CACHE_DIR", str(tmp_path / "dj"))
    monkeypatch.setenv("JITCACHE_HOME", str(tmp_path / "root"))
    yield
    deepep.uninstall()


def profile(modes=("decode",), dtype="bf16", cap=64):
    return parse_profile({
        "model": {"name": "m", "hidden": 256, "num_experts": 16, "num_topk": 4, "dispatch_dtype": dtype},
        "parallel": {"ep_size": 1, "ranks_per_node": 1},
        "serving": {"max_num_batched_tokens": cap, "modes": list(modes)},
        "deep_ep": {"expert_alignment": 2, "num_sms": 8},
    }, source="small.toml", name="small")


def buffer(cls=fake.EPBuffer, dtype="bf16"):
    return cls(num_max_tokens_per_rank=64, hidden=256, num_topk=4, use_fp8_dispatch=dtype == "fp8")


def test_warms_every_bucket_in_plan_order_and_detects_compiles_from_the_cache_dir(tmp_path):
    prof = profile()
    buf = buffer()
    report = warmup(buf, prof, progress=False)
    steps = plan(prof).steps()
    assert [(r.mode, r.num_max_tokens_per_rank) for r in report.results] == list(steps)
    assert [c["num_max_tokens_per_rank"] for c in buf.calls] == [b for _, b in steps] == [1, 2, 4, 8, 16, 32, 64]
    assert all(c["do_expand"] is False and c["do_cpu_sync"] is False for c in buf.calls)
    assert all((c["num_sms"], c["expert_alignment"], c["num_experts"]) == (8, 2, 16) for c in buf.calls)
    assert len(buf.combine_calls) == 7
    # Each decode step made the double write 4 entries (dispatch, copy epilogue, combine, reduce epilogue).
    assert report.num_compiled == 7 and report.num_cached == 0 and report.num_entries_written == 28
    on_disk = sorted(p.name for p in (tmp_path / "dj" / "cache").iterdir())
    assert sorted(e for r in report.results for e in r.entries_written) == on_disk
    assert all((tmp_path / "dj" / "cache" / name / ".committed").is_file() for name in on_disk)

    again = warmup(buffer(), prof, progress=False)  # a new process with the cache on disk
    assert again.num_compiled == 0 and again.num_cached == 7 and again.num_entries_written == 0


def test_synthetic_routing_is_valid_deterministic_and_within_the_bucket():
    prof = profile()
    first, second = buffer(), buffer()
    warmup(first, prof, progress=False, save=False)
    warmup(second, prof, progress=False, save=False)
    for a, b in zip(first.calls, second.calls):
        idx = a["topk_idx"]
        rows = idx.shape[0]
        assert 1 <= rows <= a["num_max_tokens_per_rank"]
        assert idx.dtype == torch.int64 and idx.shape[1] == 4
        assert int(idx.min()) >= 0 and int(idx.max()) < 16
        assert all(len(set(row.tolist())) == 4 for row in idx)  # distinct experts per token
        assert a["x"].dtype == torch.bfloat16 and a["x"].shape == (rows, 256)
        assert a["topk_weights"].dtype == torch.float32
        assert torch.equal(idx, b["topk_idx"]) and torch.equal(a["x"], b["x"])
    other = buffer()
    warmup(other, prof, progress=False, save=False, seed=1)
    assert not torch.equal(other.calls[-1]["topk_idx"], first.calls[-1]["topk_idx"])


def test_fp8_profile_dispatches_fp8_with_scales():
    buf = buffer(dtype="fp8")
    warmup(buf, profile(dtype="fp8"), progress=False, save=False)
    x, scales = buf.calls[0]["x"]
    assert x.dtype == torch.float8_e4m3fn and scales.dtype == torch.float32
    assert scales.shape == (x.shape[0], 256 // 128)
    source = next((p for p in buf.compiles if p.startswith("dispatch.")))
    assert source  # the double saw hidden_bytes=256, sf_packs=2: an fp8 kernel


def test_all_modes_prefill_and_cached():
    prof = profile(modes=("decode", "prefill", "cached"), cap=4)
    buf = buffer()
    report = warmup(buf, prof, progress=False, save=False)
    assert [(r.mode, r.num_max_tokens_per_rank) for r in report.results] == list(plan(prof).steps())
    prefill = [c for c in buf.calls if c["do_expand"]]
    assert len(prefill) == 1 and prefill[0]["num_max_tokens_per_rank"] is None and prefill[0]["do_cpu_sync"]
    cached = [c for c in buf.calls if c["handle"] is not None]
    assert len(cached) == 3 and all(c["topk_idx"] is None for c in cached)
    assert [c["handle"].num_max_tokens_per_rank for c in cached] == [1, 2, 4]


def test_report_is_saved_loaded_and_trusted_by_the_dispatcher(tmp_path):
    prof = profile()
    report = warmup(buffer(), prof, progress=False)
    saved = tmp_path / "root" / "meta" / "warmup-small.json"
    assert saved.is_file() and json.loads(saved.read_text())["totals"]["compiled"] == 7
    loaded = load_report(prof)
    assert loaded == report and isinstance(loaded, WarmupReport)
    assert loaded.warm_buckets() == {1, 2, 4, 8, 16, 32, 64}
    buf = buffer()
    d = BucketedDispatcher(buf, prof, strict=True, warm=loaded)
    d.dispatch(torch.zeros(3, 256, dtype=torch.bfloat16), topk_idx=torch.zeros(3, 4, dtype=torch.int64),
               topk_weights=None, num_experts=16, num_sms=8, expert_alignment=2, do_cpu_sync=False)
    assert buf.calls[-1]["num_max_tokens_per_rank"] == 4 and buf.compiles == []  # the serving call hits
    scanned = BucketedDispatcher(buffer(), prof, strict=True)  # warm=None: a scan finds the same
    assert scanned.warm_buckets == loaded.warm_buckets()


def test_progress_callback_gets_before_and_after_events():
    events = []
    warmup(buffer(), profile(), progress=events.append, save=False)
    # first the nvcc pass's one event (it is announced even when it then skips), then two per step
    first = events.pop(0)
    assert (first.mode, first.done, first.total, first.result) == (PRECOMPILE, 0, 7, None)
    assert len(events) == 14
    assert [e.done for e in events[::2]] == list(range(7)) and all(e.result is None for e in events[::2])
    assert [e.done for e in events[1::2]] == list(range(1, 8))
    assert events[-1].eta == 0.0 and events[-1].result.status == "compiled"


def test_elastic_buffer_21_layout():
    report = warmup(buffer(fake.ElasticBuffer), profile(), progress=False, save=False)
    assert report.api == "2.1" and report.num_compiled == 7
    assert all(e.startswith("kernel.") for r in report.results for e in r.entries_written)


def test_an_installed_strict_guard_does_not_block_warmup():
    deepep.install(profile(), strict=True, classes=[fake.EPBuffer], warm=())
    report = warmup(buffer(), profile(), progress=False, save=False)
    assert report.num_compiled == 7
    with pytest.raises(ColdVariantError):  # a fresh instance with the old (empty) warm set still refuses
        buffer().dispatch(torch.zeros(40, 256), topk_idx=torch.zeros(40, 4, dtype=torch.int64), num_experts=16)


def test_bare_policy_needs_model_dims_and_warms_decode():
    with pytest.raises(UsageError, match="hidden, num_experts, num_topk"):
        warmup(buffer(), BucketPolicy(8), progress=False, save=False)
    report = warmup(buffer(), BucketPolicy(8), progress=False, hidden=256, num_experts=16, num_topk=4)
    assert [r.num_max_tokens_per_rank for r in report.results] == [1, 2, 4, 8] and report.profile is None


def test_a_failing_step_names_the_step():
    class Broken(fake.EPBuffer):
        def combine(self, *a, **k):
            raise RuntimeError("boom")

    with pytest.raises(WarmupError, match="decode num_max_tokens_per_rank=1 failed on rank 0: RuntimeError: boom"):
        warmup(Broken(num_max_tokens_per_rank=64, hidden=256), profile(), progress=False, save=False)


def test_live_warmup_says_what_to_run_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(WarmupError, match="needs an NVIDIA GPU") as info:
        live_warmup_cli("h200-ep1")
    assert "jitcache warmup --aot --profile h200-ep1" in info.value.hint


def test_live_warmup_says_what_to_run_without_torch(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(WarmupError, match="needs PyTorch") as info:
        live_warmup_cli("h200-ep1")
    assert "--aot" in info.value.hint


def test_cli_progress_bar_and_report_rendering(capsys):
    from jitcache.cli.live_view import progress_bar, render_report
    from jitcache.cli.output import Format, Output

    out = Output(Format.human)
    with progress_bar(out) as on_event:
        report = warmup(buffer(), profile(), progress=on_event, save=False)
    render_report(out, report)
    captured = capsys.readouterr()
    assert "7 steps: 7 compiled, 0 already cached, 28 cache entries written" in captured.out
    assert "warmup" in captured.err
    render_report(Output(Format.json), report)
    assert json.loads(capsys.readouterr().out)["totals"]["compiled"] == 7
