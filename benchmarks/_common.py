"""Small helpers shared by the benchmark scripts: where results go, what machine this is."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

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
