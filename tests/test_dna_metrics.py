"""Evaluation metrics for generated DNA (rlft/diffusion/metrics.py), on hand-derived cases."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from rlft.data.dna import ALPHABET, DnaSet
from rlft.diffusion import metrics
from rlft.diffusion.metrics import (
    auroc, average_ranks, kmer_correlation, kmer_counts, load_motifs, motif_correlation, motif_counts,
    score_threshold, spearman, top_sequences,
)


def test_kmer_counts_by_hand():
    """ "ACGTA" has 3-mers ACG, CGT, GTA; with A,C,G,T = 0..3 their indices are
    ACG = 0*16 + 1*4 + 2 = 6, CGT = 1*16 + 2*4 + 3 = 27, GTA = 2*16 + 3*4 + 0 = 44.
    "AAAA" adds AAA (index 0) twice; "AC" is shorter than k and adds nothing."""
    counts = kmer_counts(["ACGTA", "AAAA", "AC"], k=3)
    assert counts.shape == (64,) and counts.sum() == 5
    assert {i: c for i, c in enumerate(counts) if c} == {0: 2, 6: 1, 27: 1, 44: 1}
    assert kmer_counts(["ACGT"], k=1).tolist() == [1, 1, 1, 1]
    assert kmer_counts(["TTT"], k=2)[15] == 2  # TT = 3*4 + 3


def test_kmer_correlation():
    seqs = ["ACGTACGTAA", "GGGCCCATAT", "TTTTACGCGA"]
    assert kmer_correlation(seqs, seqs) == pytest.approx(1.0)
    # Pearson correlation ignores the sample size: the reference repeated 5 times is the same.
    assert kmer_correlation(seqs, seqs * 5) == pytest.approx(1.0)
    assert kmer_correlation(seqs, ["CCCCCCCC", "GGGGGGGG"]) < 0.5


def test_ranks_and_spearman_by_hand():
    # 10 < 20 = 20 < 30: ranks 1, (2+3)/2, (2+3)/2, 4.
    assert average_ranks(np.array([20, 10, 30, 20])).tolist() == [2.5, 1.0, 4.0, 2.5]
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 35, 1000])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)
    assert math.isnan(spearman(np.array([1, 1, 1]), np.array([1, 2, 3])))


def test_auroc_by_hand():
    # Positives 0.9 and 0.4, negatives 0.5 and 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) -> 3/4.
    assert auroc(np.array([0.9, 0.4, 0.5, 0.1]), np.array([True, True, False, False])) == 0.75
    assert auroc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5  # a tie counts half


def test_score_threshold_on_a_two_column_motif():
    """Columns score A:+2, others:-1; the window score is 4 (AA) with probability 1/16, 1 with 6/16,
    -2 with 9/16. For p-value 1/16 the threshold is 4; for 7/16 it is 1 (up to the grid's slack)."""
    matrix = np.array([[2.0, 2.0], [-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]])
    assert score_threshold(matrix, 1 / 16) == pytest.approx(4.0, abs=0.01)
    assert score_threshold(matrix, 7 / 16) == pytest.approx(1.0, abs=0.01)
    assert score_threshold(matrix, 0.01) > 4.0  # no window is that rare: nothing can hit


@pytest.fixture(scope="module")
def hnf4a():
    """HNF4A (MA0114), the liver factor behind many HepG2-specific enhancers."""
    return load_motifs(["MA0114"])


def _consensus(motif) -> str:
    matrix = motif.matrix()
    return "".join(ALPHABET[i] for i in matrix.argmax(axis=0))


def _reverse_complement(seq: str) -> str:
    return seq[::-1].translate(str.maketrans("ACGT", "TGCA"))


def test_planted_motif_is_counted_on_both_strands(hnf4a):
    consensus = _consensus(hnf4a[0])
    width = len(consensus)
    background = "A" * 60  # a homopolymer: far below the motif's threshold
    planted = "A" * 10 + consensus + "A" * (50 - width)
    on_both_strands = "A" * 5 + consensus + "A" * 10 + _reverse_complement(consensus) + "A" * (45 - 2 * width)
    assert motif_counts([background], hnf4a).tolist() == [0]
    once = motif_counts([planted], hnf4a)[0]
    assert once >= 1
    assert motif_counts([planted, planted, background], hnf4a)[0] == 2 * once
    assert motif_counts([on_both_strands], hnf4a)[0] >= 2


def test_default_motifs_are_all_core_vertebrates_and_fast():
    motifs = load_motifs()
    assert len(motifs) > 800 and all(m.matrix_id.startswith("MA") for m in motifs)
    assert load_motifs() is motifs  # cached
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list(ALPHABET), 200)) for _ in range(640)]
    motif_counts(seqs[:1], motifs)  # builds the scanner (thresholds) once
    start = time.perf_counter()
    counts = motif_counts(seqs, motifs)
    assert time.perf_counter() - start < 10  # about 1 s on 2 CPU cores
    # Uniform random DNA: about 2 strands * ~190 windows * 640 sequences * 1e-4 = ~24 hits per motif.
    assert 15 < counts.mean() < 35


def test_motif_correlation_of_identical_sets_is_one():
    motifs = load_motifs(["MA0114", "MA0139", "MA0079", "MA0080"])  # HNF4A, CTCF, SP1, SPI1
    rng = np.random.default_rng(1)
    seqs = ["".join(rng.choice(list(ALPHABET), 200)) for _ in range(50)]
    seqs += [_consensus(m) + "A" * (200 - len(_consensus(m))) for m in motifs]
    assert motif_correlation(seqs, seqs, motifs) == pytest.approx(1.0)


def test_unknown_motif_id_is_named():
    with pytest.raises(ValueError, match="no JASPAR motif 'MA9999.1'"):
        load_motifs(["MA9999.1"])


class _CountOfG:
    """An oracle stand-in whose reward is the number of G's."""

    def score(self, seqs):
        return torch.tensor([float(s.count("G")) for s in seqs])


def test_top_sequences_are_the_best_scored_hepg2_rows():
    dna = DnaSet(
        sequences=["GGGG", "GGGA", "GGAA", "GAAA", "GGGG"],
        cell_types=["K562", "HepG2", "HepG2", "HepG2", "HepG2"],
        splits=["test"] * 5,
    )
    assert top_sequences(dna, _CountOfG(), 0.5) == ["GGGG", "GGGA"]  # K562's GGGG is not eligible
    assert top_sequences(dna, _CountOfG(), 0.01) == ["GGGG"]  # at least one
    with pytest.raises(ValueError, match="fraction"):
        top_sequences(dna, _CountOfG(), 0)


def test_scanner_is_cached_per_motif_set_and_pvalue(hnf4a):
    motif_counts(["A" * 30], hnf4a, pvalue=1e-3)
    scanner = metrics._SCANNERS[(tuple(m.matrix_id for m in hnf4a), 1e-3)]
    motif_counts(["C" * 30], hnf4a, pvalue=1e-3)
    assert metrics._SCANNERS[(tuple(m.matrix_id for m in hnf4a), 1e-3)] is scanner
