"""Memory of the process a role runs in, for `perf/mem_<role>_*` metrics.

In the remote run modes every role instance is its own Ray actor process; vLLM's engine core is a
child of the generator's process, so RSS counts children. In inline mode every role shares the
driver process and reports the same numbers.
"""

from __future__ import annotations

import resource
import sys


def process_memory() -> dict[str, float]:
    """rss_mb: resident memory now (this process and its children); peak_rss_mb: this process's peak;
    gpu_peak_mb: peak memory torch allocated on the current CUDA device (only when CUDA is in use)."""
    import psutil

    me = psutil.Process()
    rss = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            rss += child.memory_info().rss
        except psutil.Error:  # a child that ended while we looked
            pass
    found = {"rss_mb": rss / 2**20, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    torch = sys.modules.get("torch")  # never import torch just to ask
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        found["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return found
