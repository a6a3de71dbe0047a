"""MDLM denoiser over DNA: a dilated 1-D residual CNN without time conditioning (docs/algorithms.md#mdlm).

The network maps a (partially masked) sequence to logits over the 5 classes A, C, G, T, MASK.
Inputs are either token ids [B, L] or (soft) one-hot vectors [B, L, 5]; soft inputs are embedded
as ``x @ embedding.weight`` so that a one-hot float input gives exactly the id embedding, and the
DRAKES relaxed sampler can push gradients through the state.

``subs_log_probs`` is the SUBS parameterisation: the model never predicts [MASK], and positions
that are already unmasked in a hard input copy themselves (carry-over unmasking).

Checkpoints are a folder with ``config.json`` (``"model_type": "mdlm"`` plus the config fields)
and ``model.safetensors``; parameters are plain ``nn.Parameter``s so DeepSpeed/ZeRO can wrap it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MODEL_TYPE = "mdlm"
CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"

# Effectively -inf, but finite: 0 * NEG_INF = 0 keeps p log(p/q) terms NaN-free where p = 0.
NEG_INF = -1e6


@dataclass
class MDLMConfig:
    """Sizes of the denoiser. Defaults are CPU-sized (see the timing note in the class docstring)."""

    length: int = 200                   # sequence length the sampler uses by default
    vocab: int = 4                      # A, C, G, T; MASK is the extra class with index `vocab`
    hidden: int = 64
    blocks: int = 8
    kernel: int = 5
    dilations: tuple[int, ...] = (1, 2, 4, 8)   # cycled over the blocks
    dropout: float = 0.0

    def __post_init__(self):
        self.dilations = tuple(int(d) for d in self.dilations)
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd so outputs align with inputs, got {self.kernel}")
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"dilations must be positive, got {self.dilations}")

    @property
    def mask_index(self) -> int:
        return self.vocab

    @property
    def num_classes(self) -> int:
        return self.vocab + 1

    def to_dict(self) -> dict:
        return {"model_type": MODEL_TYPE, **asdict(self), "dilations": list(self.dilations)}

    @classmethod
    def from_dict(cls, data: dict) -> "MDLMConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names - {"model_type"}
        if unknown:
            raise ValueError(f"unknown MDLM config keys: {sorted(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in names})


class ResidualConvBlock(nn.Module):
    """x + Dropout(Conv_dilated(GELU(LayerNorm(x)))): pre-norm keeps a deep stack trainable."""

    def __init__(self, hidden: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        # 'same' zero padding: output position l sees inputs l - d(k-1)/2 .. l + d(k-1)/2.
        self.conv = nn.Conv1d(hidden, hidden, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:        # h: [B, L, H]
        z = F.gelu(self.norm(h)).transpose(1, 2)                # conv wants [B, H, L]
        return h + self.dropout(self.conv(z).transpose(1, 2))


class MDLM(nn.Module):
    """Masked-diffusion denoiser: ids [B, L] or soft one-hots [B, L, 5] -> raw logits [B, L, 5].

    Default size (hidden 64, 8 blocks, kernel 5, dilations 1,2,4,8 -> receptive field 121 bp,
    166k parameters), measured on 2 idle CPU cores: forward on 32 x 200 ~16 ms, forward+backward
    ~60 ms. On a busy 2-core machine torch.set_num_threads(1) is far steadier than 2 threads.
    """

    def __init__(self, config: MDLMConfig | None = None):
        super().__init__()
        self.config = config or MDLMConfig()
        c = self.config
        self.embedding = nn.Embedding(c.num_classes, c.hidden)
        self.blocks = nn.ModuleList(
            ResidualConvBlock(c.hidden, c.kernel, c.dilations[i % len(c.dilations)], c.dropout)
            for i in range(c.blocks)
        )
        self.final_norm = nn.LayerNorm(c.hidden)
        self.head = nn.Linear(c.hidden, c.num_classes)

    @property
    def mask_index(self) -> int:
        return self.config.mask_index

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if not x.dtype.is_floating_point:
            return self.embedding(x.long())
        if x.shape[-1] != self.config.num_classes:
            raise ValueError(f"soft input must be [B, L, {self.config.num_classes}], got {tuple(x.shape)}")
        return x.to(self.embedding.weight.dtype) @ self.embedding.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(F.gelu(self.final_norm(h)))

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """SUBS log-probs of x0 given the state x (see ``subs_log_probs``)."""
        return subs_log_probs(self(x), x, self.mask_index)

    # ----------------------------------------------------------------------------- checkpoints
    def save_pretrained(self, folder, state_dict: dict | None = None, safe_serialization: bool = True) -> None:
        """As Hugging Face models do: `state_dict` is what to write when the module does not hold its weights
        whole (gathered from ZeRO-3 partitions); else its own."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in (state_dict or self.state_dict()).items()}
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(state, str(folder / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
        else:
            torch.save(state, folder / TORCH_WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, folder) -> "MDLM":
        folder = Path(folder)
        if not is_mdlm_folder(folder):
            raise ValueError(f"{folder} is not an MDLM folder ({CONFIG_NAME} with model_type '{MODEL_TYPE}')")
        config = MDLMConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text()))
        model = cls(config)
        weights_file, state = _read_weights(folder)
        _check_state(model.state_dict(), state, weights_file)
        model.load_state_dict(state)
        return model


def subs_log_probs(logits: torch.Tensor, x: torch.Tensor, mask_index: int = 4) -> torch.Tensor:
    """SUBS parameterisation of raw logits [B, L, V+1] for the state x.

    * The [MASK] logit is set to NEG_INF before log_softmax: x0 is never [MASK].
    * Hard state (ids [B, L]): unmasked positions get the one-hot log-prob of their own token
      (0 there, NEG_INF elsewhere) -- carry-over unmasking.
    * Soft state (float [B, L, V+1]): only the masked-logit log_softmax; the relaxed sampler
      carries unmasked mass over through its copy flag (docs/algorithms.md#drakes).
    """
    is_mask_class = torch.arange(logits.shape[-1], device=logits.device) == mask_index
    log_p = torch.log_softmax(logits.float().masked_fill(is_mask_class, NEG_INF), dim=-1)
    if x.dtype.is_floating_point:
        return log_p
    carried = torch.full_like(log_p, NEG_INF).scatter(-1, x.long().unsqueeze(-1), 0.0)
    return torch.where((x != mask_index).unsqueeze(-1), carried, log_p)


def is_mdlm_folder(folder) -> bool:
    """True when `folder` has a config.json whose model_type is 'mdlm'."""
    config_file = Path(folder) / CONFIG_NAME
    if not config_file.is_file():
        return False
    try:
        return json.loads(config_file.read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def _read_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    safe, legacy = folder / SAFE_WEIGHTS_NAME, folder / TORCH_WEIGHTS_NAME
    if safe.is_file():
        from safetensors.torch import load_file

        return safe, load_file(str(safe))
    if legacy.is_file():
        return legacy, torch.load(legacy, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no {SAFE_WEIGHTS_NAME} or {TORCH_WEIGHTS_NAME} in {folder}")


def _check_state(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], weights_file: Path) -> None:
    """Refuse a checkpoint that does not match the config, naming the offending tensor and file."""
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ValueError(f"{weights_file}: missing tensor '{missing[0]}' ({len(missing)} missing in all)")
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise ValueError(f"{weights_file}: unexpected tensor '{unexpected[0]}' ({len(unexpected)} in all)")
    for name, tensor in expected.items():
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{weights_file}: tensor '{name}' has shape {tuple(found[name].shape)}, "
                f"the config in {weights_file.parent / CONFIG_NAME} expects {tuple(tensor.shape)}"
            )
