"""Documented per-GPU facts a profile can name with ``[target] gpu``: the bandwidths DeepEP measures.

At EP>1 DeepEP chooses ``num_sms`` from the NVLink and RDMA bandwidth it
measures on the serving host (:mod:`jitcache.adapters.num_sms`); a profile
gives them as ``[target] nvlink_gbs`` / ``rdma_gbs``, or names a GPU kind
here for defaults. The values are what DeepEP's detection would return on a
standard host of that kind: NVLink = 0.9 x the sum of one GPU's links as
``nvidia-smi nvlink -s`` prints them, RDMA = ``ibstat``'s Rate (Gb/s) / 8.
Data only.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GPU_DEFAULTS", "GpuDefaults"]


@dataclass(frozen=True)
class GpuDefaults:
    """Documented bandwidths of one GPU kind, as DeepEP's detection would return them there."""

    name: str
    nvlink_gbs: float   # 0.9 x (links x GB/s per link as `nvidia-smi nvlink -s` prints it)
    rdma_gbs: float     # ibstat Rate (Gb/s) / 8 of the GPU's NIC
    description: str


#: ``[target] gpu`` names. NVLink 4 (H100/H200 SXM): 18 links x 26.5625 GB/s; NVLink 5 (GB200 NVL):
#: 18 links x 53.125 GB/s; both times DeepEP's 0.9. RDMA: one ConnectX-7 NDR (400 Gb/s) per GPU.
#: A host whose links or NICs differ (fewer links, 200 Gb/s NICs, EFA) sets the two fields itself.
GPU_DEFAULTS: dict[str, GpuDefaults] = {
    "h100-sxm": GpuDefaults("h100-sxm", 18 * 26.5625 * 0.9, 400 / 8,
                            "NVIDIA H100 SXM: NVLink 4, 18 links; ConnectX-7 400 Gb/s per GPU"),
    "h200-sxm": GpuDefaults("h200-sxm", 18 * 26.5625 * 0.9, 400 / 8,
                            "NVIDIA H200 SXM: NVLink 4, 18 links; ConnectX-7 400 Gb/s per GPU"),
    "gb200-nvl": GpuDefaults("gb200-nvl", 18 * 53.125 * 0.9, 400 / 8,
                             "NVIDIA GB200 NVL (NVL72/NVL36): NVLink 5, 18 links; ConnectX-7 400 Gb/s per GPU"),
}
