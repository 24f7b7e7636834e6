"""Small helpers shared by the benchmark scripts: where results go, what machine this is."""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).parent / "results"


def machine_label() -> str:
    """A folder name for this machine: the GPU's name when there is one, else CPU arch and cores."""
    try:
        import torch  # noqa: PLC0415 - optional

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0).split()[-1].lower()  # "NVIDIA H200" -> "h200"
    except ImportError:
        pass
    return f"cpu-{platform.machine()}-{os.cpu_count()}core"


def machine_facts() -> dict:
    return {"label": machine_label(), "platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}


def write_result(name: str, data: dict, machine: str | None = None, out_dir: Path | None = None) -> Path:
    folder = out_dir or RESULTS / (machine or machine_label())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def say(message: str) -> None:
    """A progress line with the time, flushed (device logs come back only as files)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def tensors_equal(a: Any, b: Any) -> bool:
    """Both ``None``, or the same shape and bit-identical (``torch.equal``)."""
    import torch  # noqa: PLC0415 - GPU scripts only

    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and torch.equal(a, b)


def canonical_rows(result: Any) -> tuple[Any, Any, Any, int]:
    """``(recv_x, recv_topk_idx, recv_topk_weights, valid)`` of a DeepEP 2.5 dispatch result, the ``valid``
    received rows in an order that does not depend on arrival (not part of DeepEP's contract).

    Sorted by DeepEP's own key (``recv_src_metadata[:, 0]``, what its deterministic mode sorts by) after
    a stable sort by the row's content, so that rows with equal keys (from several source ranks) still
    come out in one order.
    """
    import torch  # noqa: PLC0415 - GPU scripts only

    recv_x, recv_idx, recv_w, handle, _ = result
    valid = int(handle.psum_num_recv_tokens_per_scaleup_rank[-1].item())
    key = handle.recv_src_metadata[:valid, 0].to(torch.int64)
    content = recv_x[:valid].view(torch.int16).to(torch.int64).sum(dim=1)
    if recv_idx is not None:
        content = content * 1_000_003 + recv_idx[:valid].sum(dim=1)
    order = torch.sort(content, stable=True).indices
    order = order[torch.sort(key[order], stable=True).indices]
    pick = lambda t: None if t is None else t[:valid][order]  # noqa: E731
    return pick(recv_x), pick(recv_idx), pick(recv_w), valid


def compare_with_direct(bucketed: Any, direct: Any, combined_bucketed: Any, combined_direct: Any) -> dict:
    """The same inputs through ``BucketedDispatcher`` and straight to DeepEP: are the results bit-identical?

    ``recv_equal``: the valid received rows (:func:`canonical_rows`) of ``recv_x``, ``recv_topk_idx`` and
    ``recv_topk_weights``; ``recv_raw_positional_equal``: the same without reordering (informative);
    ``combined_equal``: both outputs of ``combine``; ``valid_rows``: the two valid counts.
    """
    p, q = canonical_rows(bucketed), canonical_rows(direct)
    return {"recv_equal": p[3] == q[3] and all(tensors_equal(u, v) for u, v in zip(p[:3], q[:3])),
            "recv_raw_positional_equal": all(tensors_equal(u[:p[3]], v[:q[3]])
                                             for u, v in zip(bucketed[:2], direct[:2])),
            "combined_equal": (tensors_equal(combined_bucketed[0], combined_direct[0])
                               and tensors_equal(combined_bucketed[1], combined_direct[1])),
            "valid_rows": [p[3], q[3]]}


def run_phase(phases: dict[str, Callable[[Any], dict]], args: Any) -> dict:
    """Run ``phases[args.phase](args)`` in this (child) process and write its JSON to ``args.phase_out``,
    whatever happens: the parent must get a result even from a phase that raised."""
    try:
        data = {"ok": True, **phases[args.phase](args)}
    except BaseException as exc:  # noqa: BLE001 - the parent must get a JSON whatever happens
        data = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    Path(args.phase_out).write_text(json.dumps(data, indent=2, default=str))
    say(f"phase {args.phase} done: ok={data['ok']}")
    return data
