"""`jitcache --version | buckets | profiles | plan`, through the real entry point."""

from __future__ import annotations

from jitcache import __version__

from cli_helpers import run_cli


def test_version():
    r = run_cli("--version")
    assert r.code == 0 and r.stdout.strip() == f"jitcache {__version__}"


def test_buckets_json_is_only_json():
    r = run_cli("buckets", "--max-num-batched-tokens", "6144", "--format", "json")
    assert r.code == 0, r.stderr
    data = r.json()
    assert data["buckets"][-1] == 6144 and data["num_buckets"] == 14
    assert 1.99 < data["max_padding_ratio"] < 2


def test_buckets_human():
    r = run_cli("buckets", "-n", "64", "-k", "2")
    assert r.code == 0
    assert "12 buckets" in r.stdout and "worst-case padding" in r.stdout


def test_buckets_bad_value_is_usage_error():
    r = run_cli("buckets", "-n", "0")
    assert r.code == 2
    assert r.stderr.startswith("Error: max_num_batched_tokens must be >= 1, got 0")
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_profiles_list_and_show():
    r = run_cli("profiles", "list", "--format", "json")
    assert r.code == 0
    assert r.json()["schema"] == 1
    names = {p["name"] for p in r.json()["profiles"]}
    assert {"h200-ep1", "deepseek-v3-ep8", "mixtral-8x7b-ep8"} <= names
    r = run_cli("profiles", "show", "kimi-k2-ep8")
    assert r.code == 0 and "num_experts = 384" in r.stdout and "[model]" in r.stdout


def test_plan_json_and_table():
    r = run_cli("plan", "--profile", "h200-ep1", "--format", "json")
    assert r.code == 0
    data = r.json()
    assert data["num_variants"] == 56 and data["counts"] == {"decode": {
        "dispatch": 14, "dispatch_copy_epilogue": 14, "combine": 14, "combine_reduce_epilogue": 14}}
    r = run_cli("plan", "-p", "h200-ep1")
    assert "h200-ep1: 57 kernels: 56 variants over 14 buckets + the buffer's barrier" in r.stdout
    assert data["num_kernels"] == 57 and data["buffer_kernels"][0]["params"]["kernel"] == "barrier_impl"


def test_plan_user_profile_error_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nname="x"\nhidden=-1\nnum_experts=8\nnum_topk=2\n'
                   "[parallel]\nep_size=1\nranks_per_node=1\n[serving]\nmax_num_batched_tokens=64\n")
    r = run_cli("plan", "--profile", str(bad))
    assert r.code == 2
    assert f"Error: {bad}: model.hidden: must be a positive integer, got -1" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_profile_has_hint():
    r = run_cli("plan", "-p", "nope")
    assert r.code == 2 and "Hint: built-in profiles:" in r.stderr


def test_debug_shows_traceback():
    r = run_cli("plan", "-p", "nope", env={"JITCACHE_DEBUG": "1"})
    assert r.code != 0 and "Traceback" in r.stderr


def test_default_profile_and_bad_option():
    assert run_cli("plan", "--format", "json").json()["profile"] == "h200-ep1"
    r = run_cli("plan", "--no-such-option")
    assert r.code == 2
