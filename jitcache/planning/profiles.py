"""Deployment profiles: one TOML file describes one serving deployment.

A profile holds everything warmup needs to know which DeepEP kernels serving
will ask for: the model's MoE shape, the EP topology, the serving cap and
modes, DeepEP settings and the target GPU. Built-in profiles live in
``cache_profiles/`` (shipped as package data); a user's own file is accepted
by path. Validation is strict: an unknown key, a wrong type or an impossible
value is a :class:`~jitcache.errors.ProfileError` naming the file and field.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from jitcache.errors import ProfileError
from jitcache.planning import DEFAULT_PROFILE as _DEFAULT_PROFILE
from jitcache.planning.buckets import BucketPolicy
from jitcache.planning.gpus import GPU_DEFAULTS
from jitcache.types import API_CHOICES, ApiChoice

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "DEFAULT_PROFILE",
    "MODES",
    "DeepEPSettings",
    "ModelSpec",
    "ParallelSpec",
    "Profile",
    "ServingSpec",
    "TargetSpec",
    "builtin_profile_names",
    "load_profile",
    "parse_profile",
]

#: Serving modes a profile can warm. ``decode``: ``do_expand=False`` without CPU
#: sync (the bucketed path); ``prefill``: ``do_expand=True`` with CPU sync;
#: ``cached``: a dispatch that reuses a previous handle (cached layout).
MODES = ("decode", "prefill", "cached")
#: The profile commands use when none is given (defined in :mod:`jitcache.planning`).
DEFAULT_PROFILE = _DEFAULT_PROFILE
DTYPES = ("bf16", "fp8")
APIS = API_CHOICES


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden: int
    num_experts: int
    num_topk: int
    dispatch_dtype: str = "bf16"


@dataclass(frozen=True)
class ParallelSpec:
    ep_size: int
    ranks_per_node: int
    nodes: int = 1


@dataclass(frozen=True)
class ServingSpec:
    max_num_batched_tokens: int
    steps_per_octave: int = 1
    min_bucket: int = 1
    alignment: int = 1
    modes: tuple[str, ...] = ("decode",)


@dataclass(frozen=True)
class DeepEPSettings:
    api: ApiChoice = "auto"
    num_sms: int = 0
    expert_alignment: int = 1
    allow_multiple_reduction: bool = True
    # The buffer's constructor flags (DeepEP's defaults; vLLM 0.33 passes False for all three unless its
    # VLLM_DEEPEP_V2_* variables are set): they enter num_sms, num_qps and the combine templates.
    allow_hybrid_mode: bool = True
    prefer_overlap_with_compute: bool = True


@dataclass(frozen=True)
class TargetSpec:
    """The GPU the kernels are for. DeepEP bakes some of its properties into templates.

    ``num_device_sms``, ``num_smem_bytes`` (max dynamic shared memory per block),
    ``clock_rate_khz`` and ``num_allocated_qps`` are what DeepEP reads from the
    device at run time; a CPU-only machine needs them written down to render
    exactly the same kernels. 0 means unknown.

    ``nvlink_gbs`` and ``rdma_gbs`` are the bandwidths DeepEP measures at EP>1
    to choose ``num_sms`` when the profile leaves it at 0 (what its
    ``get_nvlink_gbs()`` / ``get_rdma_gbs()`` return, GB/s); ``gpu`` names a
    GPU kind of :data:`jitcache.planning.gpus.GPU_DEFAULTS` whose documented values
    fill the two when they are not set.
    """

    arch: str = "sm_90a"
    num_device_sms: int = 0
    num_smem_bytes: int = 0
    clock_rate_khz: int = 0
    num_allocated_qps: int = 0
    gpu_timeout_secs: int = 100
    gpu: str = ""
    nvlink_gbs: float = 0.0
    rdma_gbs: float = 0.0


@dataclass(frozen=True)
class Profile:
    name: str
    source: str
    model: ModelSpec
    parallel: ParallelSpec
    serving: ServingSpec
    deep_ep: DeepEPSettings = field(default_factory=DeepEPSettings)
    target: TargetSpec = field(default_factory=TargetSpec)
    description: str = ""

    @property
    def policy(self) -> BucketPolicy:
        s = self.serving
        return BucketPolicy(s.max_num_batched_tokens, min_bucket=s.min_bucket,
                            steps_per_octave=s.steps_per_octave, alignment=s.alignment)

    @property
    def num_local_experts(self) -> int:
        return self.model.num_experts // self.parallel.ep_size

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["serving"]["modes"] = list(self.serving.modes)
        return data

    def fingerprint(self) -> str:
        """A short hash of everything that decides which kernels serving needs.

        Ranks compare it before a collective warmup; it ignores ``name``,
        ``source`` and ``description``, which do not change any kernel.
        """
        data = self.to_dict()
        for key in ("name", "source", "description"):
            data.pop(key)
        import hashlib

        blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# -- schema -----------------------------------------------------------------------------------

_Check = Callable[[Any], "str | None"]


def _positive(value: int) -> str | None:
    return None if value > 0 else f"must be a positive integer, got {value}"


def _non_negative(value: int) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value}"


def _gpu(value: str) -> str | None:
    return None if value in GPU_DEFAULTS else f"unknown GPU {value!r}; known: {', '.join(GPU_DEFAULTS)}"


def _one_of(choices: tuple[str, ...]) -> _Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}; got {value!r}"
    return check


def _arch(value: str) -> str | None:
    body = value[3:] if value.startswith("sm_") else ""
    digits = body.rstrip("af")
    if digits.isdigit() and len(body) - len(digits) <= 1:
        return None
    return f"must look like sm_90a or sm_100, got {value!r}"


def _modes(value: list) -> str | None:
    if not value:
        return "must name at least one mode"
    for mode in value:
        if not isinstance(mode, str) or mode not in MODES:
            return f"unknown mode {mode!r}; modes are {', '.join(MODES)}"
    if len(set(value)) != len(value):
        return f"lists a mode twice: {value}"
    return None


# section -> key -> (type, required, check)
_SCHEMA: dict[str, dict[str, tuple[type, bool, _Check | None]]] = {
    "model": {
        "name": (str, True, None),
        "hidden": (int, True, _positive),
        "num_experts": (int, True, _positive),
        "num_topk": (int, True, _positive),
        "dispatch_dtype": (str, False, _one_of(DTYPES)),
    },
    "parallel": {
        "ep_size": (int, True, _positive),
        "ranks_per_node": (int, True, _positive),
        "nodes": (int, False, _positive),
    },
    "serving": {
        "max_num_batched_tokens": (int, True, _positive),
        "steps_per_octave": (int, False, _positive),
        "min_bucket": (int, False, _positive),
        "alignment": (int, False, _positive),
        "modes": (list, False, _modes),
    },
    "deep_ep": {
        "api": (str, False, _one_of(APIS)),
        "num_sms": (int, False, _non_negative),
        "expert_alignment": (int, False, _positive),
        "allow_multiple_reduction": (bool, False, None),
        "allow_hybrid_mode": (bool, False, None),
        "prefer_overlap_with_compute": (bool, False, None),
    },
    "target": {
        "arch": (str, False, _arch),
        "num_device_sms": (int, False, _non_negative),
        "num_smem_bytes": (int, False, _non_negative),
        "clock_rate_khz": (int, False, _non_negative),
        "num_allocated_qps": (int, False, _non_negative),
        "gpu_timeout_secs": (int, False, _positive),
        "gpu": (str, False, _gpu),
        "nvlink_gbs": (float, False, _non_negative),
        "rdma_gbs": (float, False, _non_negative),
    },
}
_REQUIRED_SECTIONS = ("model", "parallel", "serving")
_TOP_LEVEL = {"description": str}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}


def _validate_section(source: str, section: str, table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ProfileError(source, f"must be a table ([{section}]), got {type(table).__name__}", field=section)
    schema = _SCHEMA[section]
    for key in table:
        if key not in schema:
            raise ProfileError(source, f"unknown key; known keys: {', '.join(schema)}", field=f"{section}.{key}")
    out: dict[str, Any] = {}
    for key, (kind, required, check) in schema.items():
        name = f"{section}.{key}"
        if key not in table:
            if required:
                raise ProfileError(source, "is required", field=name)
            continue
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # `nvlink_gbs = 430` is a number too
        # bool is a subclass of int in Python: `hidden = true` must not pass as 1.
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            raise ProfileError(source, f"must be {_TYPE_NAMES[kind]}, got {value!r}", field=name)
        if check is not None and (problem := check(value)):
            raise ProfileError(source, problem, field=name)
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def parse_profile(data: dict[str, Any], *, source: str, name: str) -> Profile:
    """Validate a parsed TOML document and build a :class:`Profile`."""
    for key in data:
        if key not in _SCHEMA and key not in _TOP_LEVEL:
            raise ProfileError(source, f"unknown section or key; sections: {', '.join(_SCHEMA)}", field=key)
    for section in _REQUIRED_SECTIONS:
        if section not in data:
            raise ProfileError(source, f"section [{section}] is required", field=section)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ProfileError(source, f"must be a string, got {description!r}", field="description")
    sections = {s: _validate_section(source, s, data.get(s, {})) for s in _SCHEMA}

    model = ModelSpec(**sections["model"])
    parallel = ParallelSpec(**sections["parallel"])
    serving = ServingSpec(**sections["serving"])
    deep_ep = DeepEPSettings(**sections["deep_ep"])
    target_fields = sections["target"]
    if target_fields.get("gpu"):
        defaults = GPU_DEFAULTS[target_fields["gpu"]]
        target_fields.setdefault("nvlink_gbs", defaults.nvlink_gbs)
        target_fields.setdefault("rdma_gbs", defaults.rdma_gbs)
    target = TargetSpec(**target_fields)

    # Cross-field rules.
    if model.num_topk > model.num_experts:
        raise ProfileError(source, f"num_topk={model.num_topk} exceeds num_experts={model.num_experts}",
                           field="model.num_topk")
    if model.num_experts % parallel.ep_size:
        raise ProfileError(source, f"num_experts={model.num_experts} is not divisible by ep_size={parallel.ep_size}",
                           field="parallel.ep_size")
    if parallel.ranks_per_node * parallel.nodes != parallel.ep_size:
        raise ProfileError(
            source,
            f"ep_size={parallel.ep_size} must equal ranks_per_node * nodes "
            f"= {parallel.ranks_per_node} * {parallel.nodes}",
            field="parallel.ep_size",
        )
    if model.dispatch_dtype == "fp8" and model.hidden % 128:
        raise ProfileError(source, f"fp8 dispatch needs hidden divisible by 128, got {model.hidden}",
                           field="model.hidden")
    if serving.min_bucket > serving.max_num_batched_tokens:
        raise ProfileError(source, f"min_bucket={serving.min_bucket} exceeds "
                           f"max_num_batched_tokens={serving.max_num_batched_tokens}", field="serving.min_bucket")
    return Profile(name=name, source=source, model=model, parallel=parallel, serving=serving,
                   deep_ep=deep_ep, target=target, description=description)


def _builtin_dir():
    # The package's own folder when it is one (every ordinary install): importlib.resources
    # (for zipped installs) costs more start-up than the rest of `jitcache plan`.
    from importlib import import_module

    package = import_module("jitcache.cache_profiles")
    if package.__file__ is not None and Path(package.__file__).parent.is_dir():
        return Path(package.__file__).parent
    from importlib import resources

    return resources.files("jitcache.cache_profiles")


def builtin_profile_names() -> list[str]:
    """Names of the profiles shipped with jitcache, sorted."""
    return sorted(p.name[:-5] for p in _builtin_dir().iterdir() if p.name.endswith(".toml"))


def load_profile(name_or_path: str | os.PathLike[str] | Profile) -> Profile:
    """Load a built-in profile by name, or a profile file by path.

    A value containing a path separator or ending in ``.toml`` is a path;
    anything else is a built-in name.
    """
    if isinstance(name_or_path, Profile):
        return name_or_path
    text_name = name_or_path if isinstance(name_or_path, str) else os.fspath(name_or_path)
    looks_like_path = isinstance(name_or_path, os.PathLike) or "/" in text_name or text_name.endswith(".toml")
    if looks_like_path:
        path = Path(text_name).expanduser()
        if not path.is_file():
            raise ProfileError(path, "no such profile file",
                               hint="pass a built-in name (`jitcache profiles list`) or a path to a .toml file")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ProfileError(path, f"cannot read: {exc.strerror}") from None
        source, name = str(path), path.stem
    else:
        resource = _builtin_dir() / f"{text_name}.toml"
        if not resource.is_file():
            known = ", ".join(builtin_profile_names())
            raise ProfileError(text_name, "no built-in profile of that name", hint=f"built-in profiles: {known}")
        raw = resource.read_bytes()
        source, name = f"{text_name}.toml", text_name
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProfileError(source, "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(source, f"invalid TOML: {exc}") from None
    return parse_profile(data, source=source, name=name)
