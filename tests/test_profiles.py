"""Deployment profiles: the built-ins load, and every bad input names file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from jitcache.errors import ProfileError
from jitcache.planning.profiles import builtin_profile_names, load_profile

GOOD = """
description = "test"
[model]
name = "m"
hidden = 7168
num_experts = 256
num_topk = 8
dispatch_dtype = "bf16"
[parallel]
ep_size = 8
ranks_per_node = 8
nodes = 1
[serving]
max_num_batched_tokens = 8192
modes = ["decode"]
[deep_ep]
num_sms = 0
[target]
arch = "sm_90a"
"""

REQUIRED = {
    "deepseek-v3-ep8": (7168, 256, 8, 8, 1),
    "deepseek-v3-ep16x2": (7168, 256, 8, 16, 2),
    "kimi-k2-ep8": (7168, 384, 8, 8, 1),
    "qwen3-235b-a22b-ep8": (4096, 128, 8, 8, 1),
    "qwen3-30b-a3b-ep4": (2048, 128, 8, 4, 1),
    "gpt-oss-120b-ep4": (2880, 128, 4, 4, 1),
    "mixtral-8x7b-ep8": (4096, 8, 2, 8, 1),
    "h200-ep1": (7168, 256, 8, 1, 1),
}


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, shape", REQUIRED.items())
def test_builtin_profiles(name, shape):
    assert name in builtin_profile_names()
    p = load_profile(name)
    assert (p.model.hidden, p.model.num_experts, p.model.num_topk, p.parallel.ep_size, p.parallel.nodes) == shape


def test_h200_rig_target():
    p = load_profile("h200-ep1")
    assert p.serving.max_num_batched_tokens == 8192
    assert p.target.arch == "sm_90a"
    # Measured on the rig (benchmarks/results/h200/gpu_capture_cache.json).
    assert (p.target.num_device_sms, p.target.num_smem_bytes, p.target.clock_rate_khz,
            p.target.num_allocated_qps) == (132, 232448, 1980000, 129)


def test_user_file_by_path(tmp_path):
    p = load_profile(write(tmp_path, GOOD, "mine.toml"))
    assert p.name == "mine" and p.parallel.ep_size == 8 and p.model.dispatch_dtype == "bf16"
    assert load_profile(str(tmp_path / "mine.toml")) == p


def test_fingerprint_ignores_name_but_not_dims(tmp_path):
    a = load_profile(write(tmp_path, GOOD, "a.toml"))
    b = load_profile(write(tmp_path, GOOD.replace('description = "test"', 'description = "x"'), "b.toml"))
    c = load_profile(write(tmp_path, GOOD.replace("hidden = 7168", "hidden = 4096"), "c.toml"))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


BAD = [
    # (replace, with, field in message, words in message)
    ("hidden = 7168", "hidden = 7168\ncolour = 1", "model.colour", "unknown key"),
    ("[target]", "[gpu]", "gpu", "unknown section"),
    ("hidden = 7168", 'hidden = "7168"', "model.hidden", "must be an integer"),
    ("hidden = 7168", "hidden = true", "model.hidden", "must be an integer"),
    ("hidden = 7168", "hidden = 7168.0", "model.hidden", "must be an integer"),
    ("hidden = 7168", "hidden = 0", "model.hidden", "positive"),
    ("hidden = 7168", "hidden = -8", "model.hidden", "positive"),
    ("max_num_batched_tokens = 8192", "max_num_batched_tokens = 0", "serving.max_num_batched_tokens", "positive"),
    ("ep_size = 8", "ep_size = 0", "parallel.ep_size", "positive"),
    ("num_topk = 8", "num_topk = 300", "model.num_topk", "exceeds num_experts"),
    ("num_experts = 256", "num_experts = 250", "parallel.ep_size", "not divisible by ep_size"),
    ("nodes = 1", "nodes = 2", "parallel.ep_size", "ranks_per_node * nodes"),
    ('dispatch_dtype = "bf16"', 'dispatch_dtype = "fp4"', "model.dispatch_dtype", "one of bf16, fp8"),
    ('modes = ["decode"]', 'modes = ["decode", "train"]', "serving.modes", "unknown mode 'train'"),
    ('modes = ["decode"]', "modes = []", "serving.modes", "at least one mode"),
    ('modes = ["decode"]', 'modes = "decode"', "serving.modes", "must be a list"),
    ('arch = "sm_90a"', 'arch = "hopper"', "target.arch", "sm_90a"),
    ("num_sms = 0", "num_sms = -2", "deep_ep.num_sms", ">= 0"),
    ('name = "m"\n', "", "model.name", "is required"),
    ('description = "test"', "description = 3", "description", "must be a string"),
]


@pytest.mark.parametrize("old, new, field, words", BAD)
def test_bad_profiles_name_file_and_field(tmp_path, old, new, field, words):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert f": {field}" in message or message.startswith(f"{path}: {field}"), message
    assert words in message, message
    assert info.value.field == field
    assert info.value.exit_code == 2


def test_missing_section(tmp_path):
    text = GOOD.split("[serving]")[0]
    with pytest.raises(ProfileError, match="section \\[serving\\] is required"):
        load_profile(write(tmp_path, text))


def test_invalid_toml(tmp_path):
    with pytest.raises(ProfileError, match="invalid TOML"):
        load_profile(write(tmp_path, "[model\nname="))


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile(tmp_path / "nope.toml")
    with pytest.raises(ProfileError, match="no built-in profile") as info:
        load_profile("not-a-profile")
    assert "h200-ep1" in info.value.hint


def test_fp8_hidden_must_fit_scales(tmp_path):
    text = GOOD.replace('dispatch_dtype = "bf16"', 'dispatch_dtype = "fp8"').replace("hidden = 7168", "hidden = 2880")
    with pytest.raises(ProfileError, match="model.hidden: fp8 dispatch needs hidden divisible by 128"):
        load_profile(write(tmp_path, text))
