"""The toolchain a live DeepEP 2.1 process compiles with, read from that process's own ``deep_ep``.

DeepEP 2.1's digest hashes ``-I <NCCL root>/include`` and
``-I<deep_ep package>/include`` as that process spells them: at import,
``deep_ep.init_jit()`` hands its JIT ``os.path.dirname(os.path.abspath(
deep_ep.__file__))``, ``find_cuda_home()`` and ``deep_ep.utils.find_pkgs.
find_nccl_root()`` (``EP_NCCL_ROOT_DIR``, ``NCCL_DIR``, else the
``nvidia-nccl`` distribution on ``sys.path``). The live warmup's precompile runs
in that process, so it asks the same functions rather than guessing: the
entries it writes then carry the names the serving DeepEP computes. The nvcc
release enters the digest too: the one under DeepEP's CUDA home is preferred.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from jitcache.errors import ToolchainError

__all__ = ["live_toolchain_args21"]


def _call(function: Any) -> str | None:
    if not callable(function):
        return None
    try:
        value = function()
    except Exception:  # noqa: BLE001 - DeepEP's own finder asserts when nothing is found
        return None
    return str(value) if value else None


def live_toolchain_args21(buffer: Any, include: Path, package_dir: Path) -> dict[str, Any]:
    """``resolve_toolchain`` keywords for the 2.1 process ``buffer`` lives in: its package's headers, NCCL root
    and CUDA home (NCCL as the AOT finds it when DeepEP's own finder is not there)."""
    top = type(buffer).__module__.split(".")[0]
    package = sys.modules.get(top)
    try:
        finders = importlib.import_module(f"{top}.utils.find_pkgs")  # deep_ep's __init__ imported it already
    except Exception:  # noqa: BLE001 - not a DeepEP 2.1 layout: find NCCL as the AOT does
        finders = None
    nccl_root = _call(getattr(finders, "find_nccl_root", None))
    local: Path | None = None
    target_nccl_include: str | None = None
    if nccl_root is not None:
        target_nccl_include = f"{nccl_root.rstrip('/')}/include"
        local = Path(target_nccl_include)
        if not (local / "nccl.h").is_file():
            raise ToolchainError(f"{local}: DeepEP's NCCL root ({top}.utils.find_pkgs.find_nccl_root()) has no "
                                 "nccl.h, so its kernels cannot be compiled here")
    nvcc = None
    cuda_home = _call(getattr(package, "find_cuda_home", None))
    if cuda_home is not None and (Path(cuda_home) / "bin" / "nvcc").is_file():
        nvcc = Path(cuda_home) / "bin" / "nvcc"
    return {"nvcc": nvcc, "deep_ep_include": include, "nccl_include": local,
            "target_nccl_include": target_nccl_include, "python_library_root": str(package_dir), "api": "2.1"}
