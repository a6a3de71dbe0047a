"""Evaluation metrics for generated DNA, adapted to the dnadiffusion data
(docs/algorithms.md#dna-evaluation-metrics).

* 3-mer Corr: Pearson correlation of k-mer counts, generated vs. a reference set.
* JASPAR Corr: Spearman correlation of per-motif hit counts, generated vs. reference. Motifs are
  the JASPAR CORE vertebrate matrices bundled with `pyjaspar` (offline SQLite files), scanned as
  log-odds PSSMs on both strands; a hit is a window whose score has p-value <= `pvalue` under a
  uniform background (FIMO's default 1e-4; the reference code used gReLU's `scan_sequences`).
* The reference set: the HepG2 sequences of the data that an oracle scores highest
  (`top_sequences`; the paper used the top 0.1% of ~700k MPRA sequences, here 11,968 HepG2 DHSs).
Pred-Activity and App-Log-Lik come from the eval oracle and the diffusion model themselves.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from rlft.data.dna import ALPHABET, HEPG2, CELL_TYPES, DnaSet, encode

JASPAR_RELEASE = "JASPAR2026"  # the newest release bundled with pyjaspar 4.0
DEFAULT_PVALUE = 1e-4
_SCORE_RESOLUTION = 0.01  # bits; grid of the exact score distribution behind the p-value thresholds

_MOTIFS: dict[tuple, list["Motif"]] = {}
_SCANNERS: dict[tuple, "_Scanner"] = {}


# ---------------------------------------------------------------------------------------- k-mers

def kmer_counts(seqs: list[str], k: int = 3) -> np.ndarray:
    """Overlapping k-mer counts summed over `seqs`, shape [4**k]; index of "ACG" = 0*16 + 1*4 + 2."""
    counts = np.zeros(4**k, dtype=np.int64)
    by_length: dict[int, list[str]] = {}
    for seq in seqs:
        by_length.setdefault(len(seq), []).append(seq)
    place_values = 4 ** np.arange(k - 1, -1, -1)
    for length, group in by_length.items():
        if length < k:
            continue
        ids = encode(group).numpy()
        windows = np.stack([ids[:, j:length - k + 1 + j] for j in range(k)], axis=-1)
        counts += np.bincount((windows @ place_values).ravel(), minlength=4**k)
    return counts


def kmer_correlation(generated: list[str], reference: list[str], k: int = 3) -> float:
    """Pearson correlation of k-mer counts.

    The reference code rescales the reference counts to the generated sample size first; Pearson
    correlation is invariant to that scaling, so the raw counts are compared.
    """
    return _pearson(kmer_counts(generated, k), kmer_counts(reference, k))


# ---------------------------------------------------------------------------------------- motifs

@dataclass(frozen=True)
class Motif:
    matrix_id: str  # e.g. "MA0114.5"
    name: str  # transcription factor, e.g. "HNF4A"
    pssm: object  # Bio.motifs.matrix.PositionSpecificScoringMatrix (log2 odds vs. uniform background)

    def matrix(self) -> np.ndarray:
        """Log-odds scores [4, width] in ALPHABET order."""
        return np.array([self.pssm[base] for base in ALPHABET], dtype=np.float64)


def load_motifs(ids: list[str] | None = None, release: str = JASPAR_RELEASE) -> list[Motif]:
    """JASPAR motifs as PSSMs: `ids` (e.g. ["MA0114"], newest version when unversioned), or
    every CORE vertebrate motif of `release` (latest versions; 1,019 in JASPAR2026). Cached."""
    key = (release, tuple(ids) if ids is not None else None)
    if key not in _MOTIFS:
        _MOTIFS[key] = [_to_pssm(m) for m in _fetch_jaspar(ids, release)]
    return _MOTIFS[key]


def _fetch_jaspar(ids: list[str] | None, release: str) -> list:
    from pyjaspar import jaspar_releases, jaspardb  # import here: ~0.5 s and only the motif metric needs it

    if release not in jaspar_releases:
        raise ValueError(f"JASPAR release {release!r} is not bundled with pyjaspar; bundled: {sorted(jaspar_releases)}")
    db = jaspardb(release=release)
    if ids is None:
        return db.fetch_motifs(collection="CORE", tax_group=["vertebrates"], all_versions=False)
    found = []
    for matrix_id in ids:
        with warnings.catch_warnings():  # pyjaspar warns and returns None for an unknown ID
            warnings.simplefilter("ignore")
            motif = db.fetch_motif_by_id(matrix_id)
        if motif is None:
            raise ValueError(f"no JASPAR motif {matrix_id!r} in {release}")
        found.append(motif)
    return found


def _to_pssm(jaspar_motif) -> Motif:
    from Bio.motifs import jaspar

    # JASPAR's pseudocounts (0.25 * sqrt(sites) per base) keep every log-odds score finite.
    pseudocounts = jaspar.calculate_pseudocounts(jaspar_motif)
    pssm = jaspar_motif.counts.normalize(pseudocounts=pseudocounts).log_odds()
    return Motif(jaspar_motif.matrix_id, jaspar_motif.name, pssm)


def score_threshold(matrix: np.ndarray, pvalue: float) -> float:
    """Smallest score s with P(score >= s) <= pvalue for a uniform random window.

    Exact distribution of the sum of independent column scores, on a grid of _SCORE_RESOLUTION
    bits (as FIMO does); each column adds one of its 4 scores with probability 1/4.
    """
    steps = np.round(matrix / _SCORE_RESOLUTION).astype(np.int64)
    steps -= steps.min(axis=0)  # shift every column to start at 0; the shift is added back below
    distribution = np.ones(1)
    for column in steps.T:
        grown = np.zeros(len(distribution) + column.max())
        for step in column:
            grown[step:step + len(distribution)] += 0.25 * distribution
        distribution = grown
    tail = np.cumsum(distribution[::-1])[::-1]  # tail[i] = P(score >= i)
    rare = (tail <= pvalue) & (distribution > 0)  # attainable scores only: the threshold is a real score
    first = int(np.argmax(rare)) if rare.any() else len(tail)
    offset = np.round(matrix / _SCORE_RESOLUTION).astype(np.int64).min(axis=0).sum()
    # Half a grid step of slack: real scores on the threshold's grid point round onto it.
    return (first + offset - 0.5) * _SCORE_RESOLUTION


class _Scanner:
    """Motifs stacked into conv1d weights, one group per motif width, both strands."""

    def __init__(self, motifs: list[Motif], pvalue: float) -> None:
        self.num_motifs = len(motifs)
        self.groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        by_width: dict[int, list[int]] = {}
        for i, motif in enumerate(motifs):
            by_width.setdefault(len(motif.pssm[ALPHABET[0]]), []).append(i)
        for indices in by_width.values():
            matrices = [motifs[i].matrix() for i in indices]
            forward = torch.tensor(np.stack(matrices), dtype=torch.float32)  # [M, 4, w]
            # Reverse complement: reversed positions, complemented bases (reversed ACGT channels).
            weight = torch.cat([forward, forward.flip(1, 2)])
            thresholds = torch.tensor([score_threshold(m, pvalue) for m in matrices], dtype=torch.float32)
            self.groups.append((torch.tensor(indices), weight, thresholds.repeat(2)[:, None]))

    @torch.no_grad()
    def counts(self, seqs: list[str], batch_size: int = 256) -> np.ndarray:
        counts = torch.zeros(self.num_motifs, dtype=torch.long)
        for start in range(0, len(seqs), batch_size):
            onehot = torch.nn.functional.one_hot(encode(seqs[start:start + batch_size]), 4)
            x = onehot.float().transpose(1, 2)  # [B, 4, L]
            for indices, weight, thresholds in self.groups:
                if weight.shape[-1] > x.shape[-1]:
                    continue
                hits = (torch.nn.functional.conv1d(x, weight) >= thresholds).sum(dim=(0, 2))
                counts[indices] += hits[:len(indices)] + hits[len(indices):]
        return counts.numpy()


def motif_counts(seqs: list[str], motifs: list[Motif], pvalue: float = DEFAULT_PVALUE) -> np.ndarray:
    """Hits per motif [len(motifs)] summed over `seqs` and both strands (window p-value <= pvalue)."""
    key = (tuple(m.matrix_id for m in motifs), pvalue)
    if key not in _SCANNERS:
        _SCANNERS[key] = _Scanner(motifs, pvalue)
    return _SCANNERS[key].counts(seqs)


def motif_correlation(generated: list[str], reference: list[str], motifs: list[Motif],
                      pvalue: float = DEFAULT_PVALUE) -> float:
    """Spearman correlation of per-motif hit counts (sample sizes need not match: ranks only)."""
    return spearman(motif_counts(generated, motifs, pvalue), motif_counts(reference, motifs, pvalue))


# ---------------------------------------------------------------------------------------- reference set

class SequenceScorer(Protocol):
    def score(self, seqs: list[str]) -> torch.Tensor: ...


def top_sequences(dna: DnaSet, oracle: SequenceScorer, fraction: float) -> list[str]:
    """The HepG2-labelled sequences of `dna` that `oracle` scores highest: the top `fraction`
    (at least one), best first."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    hepg2 = dna.subset(cell_type=CELL_TYPES[HEPG2])
    if not len(hepg2):
        raise ValueError("no HepG2 sequences in the given DnaSet")
    scores = oracle.score(hepg2.sequences)
    keep = max(1, round(fraction * len(hepg2)))
    best = torch.argsort(scores, descending=True, stable=True)[:keep]
    return [hepg2.sequences[i] for i in best.tolist()]


# ---------------------------------------------------------------------------------------- statistics

def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n; tied values share the average of their ranks."""
    values = np.asarray(values)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    _, first, ties = np.unique(values[order], return_index=True, return_counts=True)
    for start, count in zip(first[ties > 1], ties[ties > 1]):
        ranks[order[start:start + count]] = start + (count + 1) / 2
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (Pearson of average ranks); nan when either side is constant."""
    return _pearson(average_ranks(a), average_ranks(b))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        raise ValueError("AUROC needs at least one positive and one negative")
    ranks = average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])
