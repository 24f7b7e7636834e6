"""The project's vocabulary: the closed sets of words that cross module boundaries, as ``Literal`` types.

A status, a backend or a DeepEP version is one of a few known strings; naming
the set here lets mypy check every comparison and every constructor, and
gives one place to read what the words are. Pure: no imports beyond typing.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "API_CHOICES",
    "ApiChoice",
    "BUILD_STATUSES",
    "Backend",
    "BuildStatus",
    "DEEP_EP_LAYOUTS",
    "DEEP_EP_VERSIONS",
    "DeepEPVersion",
    "EntryLayout",
    "Mode",
    "StepStatus",
]

#: A DeepEP release line jitcache has an adapter for (:mod:`jitcache.adapters`).
DeepEPVersion = Literal["2.5", "2.1"]
DEEP_EP_VERSIONS: tuple[DeepEPVersion, ...] = get_args(DeepEPVersion)

#: A profile's ``[deep_ep] api``: one version, or whichever the headers / the buffer turn out to be.
ApiChoice = Literal["auto", "2.5", "2.1"]
API_CHOICES: tuple[ApiChoice, ...] = get_args(ApiChoice)

#: The folder of a jitcache root an entry lives in.
Backend = Literal["deep_ep", "triton"]

#: The on-disk layout of one entry: DeepJIT's (DeepEP 2.5, DeepGEMM), DeepEP 2.1's, or Triton's.
EntryLayout = Literal["deepjit", "deep_ep_2.1", "triton"]

#: DeepEP version -> the layout of its entries, in the adapters' order (``{a.version: a.layout for a in ADAPTERS}``,
#: a test holds them equal): what ``inspect`` needs to sort entries by DeepEP without loading an adapter.
DEEP_EP_LAYOUTS: dict[DeepEPVersion, EntryLayout] = {"2.5": "deepjit", "2.1": "deep_ep_2.1"}

#: A warmup mode (the profile's ``[serving] modes``).
Mode = Literal["decode", "prefill", "cached"]

#: What happened to one compile job of the AOT pool.
BuildStatus = Literal["compiled", "cached", "deduplicated", "received", "failed"]
BUILD_STATUSES: tuple[BuildStatus, ...] = get_args(BuildStatus)

#: What happened to one live warmup step (a DeepEP call): it compiled kernels, or found them all.
StepStatus = Literal["compiled", "cached"]
