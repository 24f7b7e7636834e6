"""Small collectives over a torch.distributed group, for gloo and NCCL groups alike.

The warmup's rank agreement, the precompile decision and the AOT entry
exchange all swap a few bytes per rank. ``all_gather_object`` would do it but
needs numpy, which a serving image may lack, so :func:`all_gather_bytes`
gathers the lengths first, then the bytes padded to the longest, as uint8
tensors on the device the group's backend talks to (NCCL: the current CUDA
device only; gloo: the CPU). ``torch`` is imported inside the functions.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["all_gather_bytes", "initialized_dist"]


def initialized_dist() -> Any:
    """The ``torch.distributed`` module when a process group is initialised, else ``None``."""
    # No process group can exist in a process that never imported torch.distributed: skip the heavy import.
    if "torch.distributed" not in sys.modules:
        return None
    try:
        import torch.distributed as dist  # noqa: PLC0415 - optional, heavy
    except ImportError:
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def all_gather_bytes(payload: bytes, group: Any = None) -> list[bytes]:
    """Every rank's ``payload``, in rank order; a collective over ``group`` (default: the world).

    Must be called by every rank of an initialised group, the same number of times in the same order.
    """
    import torch  # noqa: PLC0415 - only under torch.distributed
    import torch.distributed as dist  # noqa: PLC0415

    world = dist.get_world_size(group)
    backend = str(dist.get_backend(group)).lower()
    device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else torch.device("cpu")
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    lengths = [int(s.item()) for s in sizes]
    mine = torch.zeros(max(lengths) or 1, dtype=torch.uint8)  # never a zero-sized tensor: some backends refuse it
    if payload:
        mine[:len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    mine = mine.to(device)
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=group)
    return [bytes(t[:n].cpu().tolist()) for t, n in zip(gathered, lengths)]
