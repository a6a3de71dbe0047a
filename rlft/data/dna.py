"""Real DNA for DRAKES: 47,872 200-bp DHS sequences shipped in the PyPI package `dnadiffusion`.

The file `dnadiffusion/data/K562_hESCT0_HepG2_GM12878_12k_sequences_per_group.txt` is a
tab-separated table with a header row; we use three of its columns:
  * `sequence`: 200 bp around the DHS summit (hg38),
  * `TAG`: the one cell type with this peak, e.g. `HepG2_ENCLB029COU` (we keep the part before
    the first `_`, as the cell-type columns of the header spell it),
  * `data_label`: `training`, `validation` (chr1) or `test` (chr2).
11,968 sequences per cell type. The package's code pins torch 2.0, so it is installed with
`--no-deps`, located with `find_spec` and never imported: we only read its data file.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ALPHABET = "ACGT"
SEQUENCE_LENGTH = 200
# In the order of the cell-type columns of the file's header.
CELL_TYPES = ("GM12878", "hESCT0", "K562", "HepG2")
HEPG2 = CELL_TYPES.index("HepG2")
SPLITS = ("training", "validation", "test")

DNA_PACKAGE = "dnadiffusion"
DNA_PIP_COMMAND = "pip install --no-deps dnadiffusion==0.0.0.dev0"
DNA_FILE = "K562_hESCT0_HepG2_GM12878_12k_sequences_per_group.txt"
_COLUMNS = ("sequence", "TAG", "data_label")

# Byte value -> base index (upper and lower case); every other byte -> _NOT_A_BASE.
_NOT_A_BASE = 255
_BASE_LOOKUP = np.full(256, _NOT_A_BASE, dtype=np.uint8)
for _i, _base in enumerate(ALPHABET):
    _BASE_LOOKUP[ord(_base)] = _BASE_LOOKUP[ord(_base.lower())] = _i
_LOADED: dict[Path, "DnaSet"] = {}


class DnaDataError(ValueError):
    """A row of the DNA file that cannot be used; the message names the file and line."""


@dataclass
class DnaSet:
    """Parallel lists: sequence i has cell type `cell_types[i]` and is in split `splits[i]`."""

    sequences: list[str]
    cell_types: list[str]
    splits: list[str]

    def __len__(self) -> int:
        return len(self.sequences)

    def subset(self, split: str | None = None, cell_type: str | None = None) -> DnaSet:
        """The rows in `split` (one of SPLITS) and of `cell_type` (one of CELL_TYPES); None: any."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if cell_type is not None and cell_type not in CELL_TYPES:
            raise ValueError(f"unknown cell type {cell_type!r}; expected one of {CELL_TYPES}")
        keep = [
            i for i in range(len(self))
            if (split is None or self.splits[i] == split) and (cell_type is None or self.cell_types[i] == cell_type)
        ]
        return self.select(keep)

    def select(self, indices: list[int]) -> DnaSet:
        """The rows at `indices`, in that order."""
        return DnaSet([self.sequences[i] for i in indices], [self.cell_types[i] for i in indices],
                      [self.splits[i] for i in indices])

    def labels(self) -> torch.Tensor:
        """Cell-type indices into CELL_TYPES, LongTensor [N]."""
        return torch.tensor([CELL_TYPES.index(c) for c in self.cell_types], dtype=torch.long)


def default_path() -> Path:
    """The sequence file inside the installed `dnadiffusion` package."""
    spec = importlib.util.find_spec(DNA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the DNA data is read from the PyPI package 'dnadiffusion' (its code is not used); "
            f"install it with: {DNA_PIP_COMMAND}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / DNA_FILE


def load_dna(path: str | Path | None = None) -> DnaSet:
    """Every row of the file (parsed once per path and process); see the module docstring."""
    path = Path(path) if path is not None else default_path()
    key = path.resolve()
    if key not in _LOADED:
        _LOADED[key] = _parse(path)
    return _LOADED[key]


def _parse(path: Path) -> DnaSet:
    with open(path) as lines:
        header = next(lines, "").rstrip("\n").split("\t")
        missing = [c for c in _COLUMNS if c not in header]
        if missing:
            raise DnaDataError(f"{path}:1: header lacks column(s) {missing}")
        columns = [header.index(c) for c in _COLUMNS]
        dna = DnaSet([], [], [])
        for line_number, line in enumerate(lines, start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != len(header):
                raise DnaDataError(f"{path}:{line_number}: {len(fields)} fields, the header has {len(header)}")
            sequence, tag, split = (fields[c] for c in columns)
            problem = _row_problem(sequence.upper(), tag.split("_")[0], split)
            if problem:
                raise DnaDataError(f"{path}:{line_number}: {problem}")
            dna.sequences.append(sequence.upper())
            dna.cell_types.append(tag.split("_")[0])
            dna.splits.append(split)
    return dna


def _row_problem(sequence: str, cell_type: str, split: str) -> str | None:
    """What is wrong with one row, or None."""
    if len(sequence) != SEQUENCE_LENGTH:
        return f"sequence has length {len(sequence)}, expected {SEQUENCE_LENGTH}"
    bad = sorted(set(sequence) - set(ALPHABET))
    if bad:
        return f"sequence has character(s) {bad} outside {ALPHABET}"
    if cell_type not in CELL_TYPES:
        return f"unknown cell type {cell_type!r}; expected one of {CELL_TYPES}"
    if split not in SPLITS:
        return f"unknown split {split!r}; expected one of {SPLITS}"
    return None


def encode(seqs: list[str]) -> torch.Tensor:
    """LongTensor [N, L] with A=0, C=1, G=2, T=3; all sequences must have the same length."""
    lengths = {len(s) for s in seqs}
    if len(lengths) > 1:
        raise ValueError(f"sequences of different lengths {sorted(lengths)} cannot be stacked")
    length = lengths.pop() if lengths else 0
    codes = _BASE_LOOKUP[np.frombuffer("".join(seqs).encode("latin-1", "replace"), dtype=np.uint8)]
    if (codes == _NOT_A_BASE).any():
        bad = sorted(set("".join(seqs).upper()) - set(ALPHABET))
        raise ValueError(f"character(s) {bad} are not in {ALPHABET}")
    return torch.from_numpy(codes.astype(np.int64).reshape(len(seqs), length))


def decode(ids: torch.Tensor) -> list[str]:
    """The strings of a LongTensor [N, L] of base indices."""
    letters = np.frombuffer(ALPHABET.encode(), dtype=np.uint8)[ids.detach().cpu().numpy()]
    return [row.tobytes().decode() for row in letters]


def one_hot(ids: torch.Tensor) -> torch.Tensor:
    """Float tensor [N, L, 4]: the input format of the DNA oracles."""
    return torch.nn.functional.one_hot(ids, len(ALPHABET)).float()
