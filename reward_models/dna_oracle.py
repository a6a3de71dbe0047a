"""DNA oracles for DRAKES: small 1-D CNN cell-type classifiers over one-hot 200-bp sequences.

The input is a float tensor [B, L, 4] (A, C, G, T), not base indices, so the straight-through
one-hot samples of the relaxed sampler carry gradients into the reward. The output is logits [B, 4]
over CELL_TYPES; the reward is the HepG2 logit or HepG2-vs-rest log-odds (`OracleConfig.reward`).
Two checkpoints are shipped, trained on disjoint data (see train_dna_oracle.py):
`reward_models/dna/ft` (the reward that is fine-tuned against) and `reward_models/dna/eval`
(held out: evaluation only, so reward hacking of the first one's errors does not count as success).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rlft.data.dna import CELL_TYPES, SEQUENCE_LENGTH, DnaSet, encode, one_hot
from rlft.diffusion.metrics import auroc

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SHIPPED = Path(__file__).resolve().parent / "dna"
SHIPPED_NAMES = ("ft", "eval")


def reverse_complement(onehot: torch.Tensor) -> torch.Tensor:
    """[B, L, 4] -> the other strand: positions reversed, A<->T and C<->G (reversed ACGT channels)."""
    return onehot.flip(1, 2)


class OracleCheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file and what is wrong."""


@dataclass
class OracleConfig:
    channels: int = 64  # filters in every conv layer
    kernel_sizes: tuple[int, ...] = (11, 7, 5)  # one conv layer per entry
    pool: int = 4  # max-pool width after every conv layer but the last (then a global max-pool)
    dropout: float = 0.2  # before the linear head
    length: int = SEQUENCE_LENGTH  # input length the oracle was trained on
    cell_types: tuple[str, ...] = CELL_TYPES  # output order of the logits
    reward: Literal["logit", "log_odds"] = "log_odds"  # HepG2 logit, or log p(HepG2) - log(1 - p(HepG2))
    target: str = "HepG2"  # the cell type the reward is about

    def __post_init__(self) -> None:
        self.kernel_sizes = tuple(self.kernel_sizes)
        self.cell_types = tuple(self.cell_types)
        if self.reward not in ("logit", "log_odds"):
            raise ValueError(f"OracleConfig.reward must be 'logit' or 'log_odds', got {self.reward!r}")
        if self.target not in self.cell_types:
            raise ValueError(f"OracleConfig.target {self.target!r} is not one of {self.cell_types}")


class DnaOracle(nn.Module):
    def __init__(self, config: OracleConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or OracleConfig()
        in_channels = 4
        for i, kernel_size in enumerate(config.kernel_sizes):
            self.add_module(f"conv{i + 1}", nn.Conv1d(in_channels, config.channels, kernel_size, padding="same"))
            in_channels = config.channels
        self.pool = nn.MaxPool1d(config.pool)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.channels, len(config.cell_types))
        self.facts: dict[str, Any] = {}  # how it was trained (config.json "facts"), for reports

    def _convs(self) -> list[nn.Conv1d]:
        return [getattr(self, f"conv{i + 1}") for i in range(len(self.config.kernel_sizes))]

    def strand_logits(self, onehot: torch.Tensor) -> torch.Tensor:
        """Logits [B, len(cell_types)] of the strand as given; input [B, L, 4]."""
        if onehot.dim() != 3 or onehot.shape[1:] != (self.config.length, 4):
            raise ValueError(f"DnaOracle expects one-hot input [B, {self.config.length}, 4], got {tuple(onehot.shape)}")
        x = onehot.transpose(1, 2)
        convs = self._convs()
        for i, conv in enumerate(convs):
            x = torch.relu(conv(x))
            if i < len(convs) - 1:
                x = self.pool(x)
        return self.head(self.dropout(x.amax(dim=-1)))

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        """Logits [B, len(cell_types)] for one-hot input [B, L, 4], averaged over both strands, so
        a sequence and its reverse complement score the same (DNA is double-stranded)."""
        return 0.5 * (self.strand_logits(onehot) + self.strand_logits(reverse_complement(onehot)))

    def reward(self, onehot: torch.Tensor) -> torch.Tensor:
        """Reward [B] per `config.reward`; differentiable w.r.t. `onehot`."""
        logits = self(onehot)
        target = self.config.cell_types.index(self.config.target)
        if self.config.reward == "logit":
            return logits[:, target]
        # log p - log(1 - p) = logit_target - logsumexp(other logits): the softmax normaliser cancels.
        others = torch.cat([logits[:, :target], logits[:, target + 1:]], dim=1)
        return logits[:, target] - torch.logsumexp(others, dim=1)

    @torch.no_grad()
    def score(self, seqs: list[str], batch_size: int = 512) -> torch.Tensor:
        """Reward [N] of DNA strings, in batches, without gradients."""
        rewards = [self.reward(one_hot(encode(seqs[i:i + batch_size]))) for i in range(0, len(seqs), batch_size)]
        return torch.cat(rewards) if rewards else torch.zeros(0)

    def save(self, folder: str | Path, facts: dict[str, Any] | None = None) -> None:
        """`model.safetensors` + `config.json` ({"config": ..., "facts": ...}) in `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.facts = dict(facts if facts is not None else self.facts)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_FILE))
        text = json.dumps({"config": dataclasses.asdict(self.config), "facts": self.facts}, indent=2)
        (folder / CONFIG_FILE).write_text(text + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> DnaOracle:
        """A frozen oracle in eval mode; refuses weights that do not match config.json by name."""
        folder = Path(folder)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise OracleCheckpointError(
                    f"{folder / name}: missing (an oracle folder holds {CONFIG_FILE} and {WEIGHTS_FILE})")
        oracle = cls(_read_config(folder / CONFIG_FILE))
        weights = load_file(str(folder / WEIGHTS_FILE))
        _check_weights(folder / WEIGHTS_FILE, weights, oracle.state_dict())
        oracle.load_state_dict(weights)
        oracle.facts = json.loads((folder / CONFIG_FILE).read_text()).get("facts", {})
        return oracle.eval().requires_grad_(False)


def _read_config(path: Path) -> OracleConfig:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise OracleCheckpointError(f"{path}: not valid JSON ({err})") from None
    section = raw.get("config")
    if not isinstance(section, dict):
        raise OracleCheckpointError(f"{path}: no 'config' object")
    known = {f.name for f in dataclasses.fields(OracleConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise OracleCheckpointError(f"{path}: unknown config key(s) {unknown}; known: {sorted(known)}")
    try:
        return OracleConfig(**section)
    except (TypeError, ValueError) as err:
        raise OracleCheckpointError(f"{path}: {err}") from None


def _check_weights(path: Path, weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Names and shapes of `weights` against the model built from config.json."""
    problems = []
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing:
        problems.append(f"missing tensor(s) {missing}")
    if unexpected:
        problems.append(f"unexpected tensor(s) {unexpected}")
    for name in sorted(set(weights) & set(expected)):
        got, want = tuple(weights[name].shape), tuple(expected[name].shape)
        if got != want:
            problems.append(f"tensor '{name}' has shape {got} but {CONFIG_FILE} gives {want}")
    if problems:
        raise OracleCheckpointError(f"{path}: " + "; ".join(problems))


def load_oracle(name_or_folder: str | Path) -> DnaOracle:
    """"ft" or "eval" (the shipped oracles under reward_models/dna/), or a checkpoint folder."""
    if str(name_or_folder) in SHIPPED_NAMES:
        return DnaOracle.load(SHIPPED / str(name_or_folder))
    return DnaOracle.load(name_or_folder)


@torch.no_grad()
def evaluate_oracle(oracle: DnaOracle, dna: DnaSet, batch_size: int = 512) -> dict[str, float]:
    """4-way accuracy and target-vs-rest AUROC (of the reward) on `dna`."""
    if oracle.config.cell_types != CELL_TYPES:  # DnaSet.labels() index CELL_TYPES
        raise ValueError(f"oracle outputs {oracle.config.cell_types}, the data is labelled {CELL_TYPES}")
    was_training = oracle.training
    oracle.eval()
    logits, rewards = [], []
    for start in range(0, len(dna), batch_size):
        x = one_hot(encode(dna.sequences[start:start + batch_size]))
        logits.append(oracle(x))
        rewards.append(oracle.reward(x))
    oracle.train(was_training)
    labels = dna.labels()
    accuracy = (torch.cat(logits).argmax(dim=1) == labels).float().mean().item()
    positive = (labels == oracle.config.cell_types.index(oracle.config.target)).numpy()
    return {"accuracy": accuracy, "auroc": auroc(torch.cat(rewards).numpy(), positive)}

