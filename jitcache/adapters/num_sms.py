"""DeepEP's own ``num_sms`` choice as a pure function of profile facts, for both DeepEP versions.

``num_sms`` is a template argument of every dispatch and combine kernel, so a
cache filled ahead of time must use the value DeepEP will pick on the serving
host. A caller that passes ``num_sms=0`` (and vLLM 0.33, which passes
``buffer.get_theoretical_num_sms(num_experts, num_topk)``) gets DeepEP's
bandwidth model: ``EPBuffer.get_theoretical_num_sms`` (DeepEP 2.5,
``deep_ep/buffers/ep.py``) or ``ElasticBuffer.get_theoretical_num_sms``
(DeepEP 2.1, ``deep_ep/buffers/elastic.py``). Facts read there (the code is
not copied; ``tests/test_num_sms_model.py`` checks this module against
DeepEP's own function for every built-in profile):

- the model assumes a balanced gate: the expected number of ranks a token's
  top-k lands on is ``g * (1 - C(E - E/g, k) / C(E, k))`` for ``g`` groups;
- per unit of scale-up traffic it counts SM reads and writes (token reads,
  send-buffer writes, NVLink issue, RDMA forwarding) and NVLink and RDMA
  traffic; the bound link is RDMA when there is a scale-out domain and
  ``rdma / rdma_gbs > nvlink / nvlink_gbs``, else NVLink;
- SMs needed = ``gbs / traffic * sm_traffic / per-SM bandwidth``, the largest
  over dispatch's read and write (2.5 adds combine's two terms); every SM of
  the device when there is no traffic (EP1);
- per-SM bandwidths: 2.1 200 GB/s read, 50 GB/s write; 2.5 180 and 45;
- rounding: 2.1 ``align(max(4, ceil(n * 1.25)), 2)``, capped by the device's
  SMs; 2.5 ``align(max(4, ceil(n * 1.3)), 4)``, capped by the device's SMs
  rounded down to even; ``prefer_overlap_with_compute=False`` raises it to at
  least 64 before the cap (vLLM 0.33's default: ``VLLM_DEEPEP_V2_PREFER_OVERLAP``
  is 0 unless set);
- the domains: the NVLink (LSA) team is a node's ranks, the RDMA ranks the
  nodes; with ``allow_hybrid_mode`` the logical scale-out ranks are the nodes
  and scale-up the node's ranks, without it one scale-out rank of all ranks;
- bandwidths DeepEP measures when not told: NVLink = 0.9 x the sum of one
  GPU's links in ``nvidia-smi nvlink -s``; RDMA = ``ibstat``'s Rate (Gb/s) / 8
  of ``mlx5_0`` (``EP_NIC_NAME``), only with more than one RDMA rank. A failed
  measurement is 0 (DeepEP prints "Failed to get NVLink connection speed"),
  which gives 4 SMs (64 without overlap).

The profile carries those bandwidths as ``[target] nvlink_gbs`` and
``rdma_gbs`` (the values DeepEP's detection returns), or names a GPU
(``[target] gpu``) whose defaults :data:`jitcache.planning.gpus.GPU_DEFAULTS`
documents. DeepEP-version rules: this module belongs to the version adapters.
Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from jitcache.errors import ProfileError
from jitcache.planning.gpus import GPU_DEFAULTS

__all__ = ["NumSmsRule", "RankDomain", "profile_num_sms", "rank_domain", "theoretical_num_sms"]


@dataclass(frozen=True)
class RankDomain:
    """How DeepEP sees the EP group: physical (RDMA x NVLink) and logical (scale-out x scale-up) domains."""

    num_ranks: int
    num_rdma_ranks: int
    num_nvlink_ranks: int
    num_scaleout_ranks: int
    num_scaleup_ranks: int


def rank_domain(num_ranks: int, ranks_per_node: int, allow_hybrid_mode: bool = True) -> RankDomain:
    """DeepEP's ``get_physical_domain_size`` / ``get_logical_domain_size`` for ``num_ranks`` in nodes of ``ranks_per_node``."""
    if num_ranks % ranks_per_node:
        raise ValueError(f"num_ranks={num_ranks} is not a multiple of ranks_per_node={ranks_per_node}")
    rdma = num_ranks // ranks_per_node
    if allow_hybrid_mode:
        return RankDomain(num_ranks, rdma, ranks_per_node, rdma, ranks_per_node)
    return RankDomain(num_ranks, rdma, ranks_per_node, 1, num_ranks)


@dataclass(frozen=True)
class NumSmsRule:
    """What one DeepEP version's ``get_theoretical_num_sms`` does differently (each adapter holds its own:
    ``DeepEPAdapter.num_sms_rule``): per-SM bandwidths, combine's terms, the rounding and the cap."""

    sm_read_gbs: float
    sm_write_gbs: float
    with_combine_terms: bool
    factor: float
    alignment: int
    even_cap: bool



def _expected_groups(num_experts: int, num_topk: int, num_groups: int) -> float:
    # Balanced gate: the expected number of distinct groups among a token's top-k experts.
    if num_experts % num_groups:
        raise ValueError(f"num_experts={num_experts} is not divisible into {num_groups} groups")
    missed = math.comb(num_experts - num_experts // num_groups, num_topk) / math.comb(num_experts, num_topk)
    return num_groups * (1 - missed)


def theoretical_num_sms(rule: NumSmsRule, *, num_experts: int, num_topk: int, num_device_sms: int, domain: RankDomain,
                        nvlink_gbs: float, rdma_gbs: float = 0.0, prefer_overlap_with_compute: bool = True) -> int:
    """The ``num_sms`` the DeepEP whose ``rule`` it is picks from these facts (bandwidths in GB/s).

    Raises :class:`ValueError` where DeepEP itself would divide by zero (a
    scale-out domain with a zero bandwidth).
    """
    d = domain
    topk = _expected_groups(num_experts, num_topk, d.num_ranks)
    scaleout_topk = _expected_groups(num_experts, num_topk, d.num_scaleout_ranks) if d.num_scaleout_ranks > 1 else 0.0
    sm_read = 1 / topk
    sm_write = 0.0
    rdma = nvlink = 0.0
    if d.num_scaleout_ranks > 1:
        sm_write += 1 / topk                                          # the send buffer
        sm_write += (1 / topk) * (scaleout_topk / d.num_scaleout_ranks)  # local bypass
        rdma += (1 / topk) * (scaleout_topk * (1 - 1 / d.num_scaleout_ranks))
        sm_read += scaleout_topk / topk                               # forwarding
        sm_write += 1                                                 # issuing scale-up
        nvlink += 1 - 1 / d.num_scaleup_ranks
    else:
        if d.num_rdma_ranks > 1:
            sm_write += 1 / topk
        sm_write += d.num_nvlink_ranks / d.num_ranks
        nvlink += d.num_nvlink_ranks / d.num_ranks * (1 - 1 / d.num_nvlink_ranks)
        rdma += (d.num_ranks - d.num_nvlink_ranks) / d.num_ranks
    if d.num_scaleout_ranks > 1:
        if rdma_gbs <= 0 or nvlink_gbs <= 0:
            raise ValueError("a scale-out domain needs both bandwidths (DeepEP divides by them)")
        rdma_bound = rdma / rdma_gbs > nvlink / nvlink_gbs
    else:
        rdma_bound = False
    traffic, gbs = (rdma, rdma_gbs) if rdma_bound else (nvlink, nvlink_gbs)

    num_sms: float = num_device_sms  # no traffic (EP1): every SM
    if traffic > 0:
        per_traffic = gbs / traffic
        terms = [per_traffic * sm_read / rule.sm_read_gbs, per_traffic * sm_write / rule.sm_write_gbs]
        if rule.with_combine_terms:
            terms += [per_traffic * (sm_write - nvlink) / rule.sm_read_gbs,
                      per_traffic * (sm_read + nvlink) / rule.sm_write_gbs]
        num_sms = max(terms)
    chosen = -(-max(4, math.ceil(num_sms * rule.factor)) // rule.alignment) * rule.alignment
    if not prefer_overlap_with_compute:
        chosen = max(chosen, 64)
    return min(chosen, num_device_sms // 2 * 2 if rule.even_cap else num_device_sms)


def _gpu_names() -> str:
    return ", ".join(f"{g.name} ({g.nvlink_gbs:g} GB/s NVLink, {g.rdma_gbs:g} GB/s RDMA)"
                     for g in GPU_DEFAULTS.values())


def profile_num_sms(profile, rule: NumSmsRule) -> int:
    """The choice of the DeepEP whose ``rule`` it is for ``profile`` when it leaves ``[deep_ep] num_sms`` at 0.

    Reads the model shape, the EP topology, ``[deep_ep] allow_hybrid_mode`` and
    ``prefer_overlap_with_compute``, and ``[target]`` ``num_device_sms``,
    ``nvlink_gbs`` and (with more than one node) ``rdma_gbs``. A bandwidth the
    model needs and the profile leaves at 0 is a :class:`ProfileError` naming
    the field and the GPU defaults that exist.
    """
    p, m, t, d = profile.parallel, profile.model, profile.target, profile.deep_ep
    if t.num_device_sms <= 0:
        raise ProfileError(profile.source, "is 0 (unknown): DeepEP's num_sms is capped by the device's SMs",
                           field="target.num_device_sms",
                           hint="copy it from the GPU (torch.cuda.get_device_properties(0).multi_processor_count)")
    domain = rank_domain(p.ep_size, p.ranks_per_node, d.allow_hybrid_mode)
    needs_nvlink = domain.num_ranks > 1
    needs_rdma = domain.num_scaleout_ranks > 1
    for name, needed, value in (("nvlink_gbs", needs_nvlink, t.nvlink_gbs), ("rdma_gbs", needs_rdma, t.rdma_gbs)):
        if needed and value <= 0:
            measured = ("0.9 x the sum of one GPU's links in `nvidia-smi nvlink -s`" if name == "nvlink_gbs"
                        else "ibstat's Rate (Gb/s) / 8 for the NIC DeepEP uses (EP_NIC_NAME, default mlx5_0)")
            raise ProfileError(
                profile.source,
                f"is 0 (unknown): at EP{p.ep_size} ({p.nodes} node{'s' if p.nodes > 1 else ''}) with "
                "[deep_ep] num_sms = 0, DeepEP derives num_sms from this bandwidth, which it measures on the "
                "serving host", field=f"target.{name}",
                hint=f"set [target] {name} in GB/s ({measured}), or [target] gpu to one of: {_gpu_names()}; "
                     "or pin [deep_ep] num_sms")
    return theoretical_num_sms(rule, num_experts=m.num_experts, num_topk=m.num_topk,
                               num_device_sms=t.num_device_sms, domain=domain, nvlink_gbs=t.nvlink_gbs,
                               rdma_gbs=t.rdma_gbs, prefer_overlap_with_compute=d.prefer_overlap_with_compute)
