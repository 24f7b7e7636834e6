"""``jitcache.triton``: the public spelling of the Triton AOT registry (see :mod:`jitcache.build.triton_aot`).

Only absolute imports here: this module is named like the real ``triton``
package, and ``from __future__`` plus absolute imports keep ``import triton``
(in jitcache or anywhere else) resolving to the real package.
"""

from __future__ import annotations

from jitcache.build.triton_aot import Pointer, TritonKernel, clear_registry, register, registered

__all__ = ["Pointer", "TritonKernel", "clear_registry", "register", "registered"]
