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
