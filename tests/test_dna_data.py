"""The DNA data of DRAKES: the dnadiffusion sequence file, its checks, and the encodings."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from rlft.data import dna
from rlft.data.dna import CELL_TYPES, HEPG2, SPLITS, DnaDataError, decode, encode, load_dna, one_hot

HEADER = "dhs_id\tsequence\tTAG\tdata_label\n"


def _write(tmp_path, rows: list[tuple[str, str, str]], name: str = "seqs.txt"):
    path = tmp_path / name
    path.write_text(HEADER + "".join(f"id{i}\t{seq}\t{tag}\t{split}\n" for i, (seq, tag, split) in enumerate(rows)))
    return path


GOOD = ("ACGT" * 50, "HepG2_ENCLB029COU", "training")


def test_shipped_file_counts():
    data = load_dna()
    assert len(data) == 47_872
    assert CELL_TYPES[HEPG2] == "HepG2"
    assert Counter(data.cell_types) == {cell: 11_968 for cell in CELL_TYPES}
    assert set(data.splits) == set(SPLITS)
    assert len(data.subset("training")) + len(data.subset("validation")) + len(data.subset("test")) == len(data)
    assert len(data.subset("test", "HepG2")) == 958
    assert all(len(s) == dna.SEQUENCE_LENGTH for s in data.sequences[:100])
    assert load_dna() is data  # parsed once


def test_subset_and_labels(tmp_path):
    rows = [GOOD, ("A" * 200, "K562_ENCLB843GMH", "test"), ("C" * 200, "HepG2_x", "test")]
    data = load_dna(_write(tmp_path, rows))
    test_hepg2 = data.subset(split="test", cell_type="HepG2")
    assert test_hepg2.sequences == ["C" * 200] and len(test_hepg2) == 1
    assert data.labels().tolist() == [HEPG2, CELL_TYPES.index("K562"), HEPG2]
    with pytest.raises(ValueError, match="unknown split 'train'"):
        data.subset(split="train")


def test_lower_case_is_upper_cased(tmp_path):
    data = load_dna(_write(tmp_path, [("acgt" * 50, "GM12878_ENCLB441ZZZ", "validation")]))
    assert data.sequences == ["ACGT" * 50] and data.cell_types == ["GM12878"]


def test_encode_decode_round_trip():
    seqs = ["ACGTTGCA", "GGGAAACC"]
    ids = encode(seqs)
    assert ids.dtype == torch.long and ids.tolist()[0] == [0, 1, 2, 3, 3, 2, 1, 0]
    assert decode(ids) == seqs
    real = load_dna().sequences[:64]
    assert decode(encode(real)) == real
    hot = one_hot(encode(["ACGT"]))
    assert hot.dtype == torch.float32 and hot.shape == (1, 4, 4)
    assert torch.equal(hot[0], torch.eye(4))


def test_encode_refuses_other_letters_and_ragged_input():
    with pytest.raises(ValueError, match=r"\['N'\]"):
        encode(["ACGN"])
    with pytest.raises(ValueError, match="different lengths"):
        encode(["ACG", "AC"])


@pytest.mark.parametrize("bad_row, problem", [
    (("ACGN" * 50, "HepG2_ENCLB029COU", "training"), r"character\(s\) \['N'\] outside ACGT"),
    (("ACGT" * 49, "HepG2_ENCLB029COU", "training"), "length 196, expected 200"),
    (("ACGT" * 50, "Liver_ENCL", "training"), "unknown cell type 'Liver'"),
    (("ACGT" * 50, "HepG2_ENCLB029COU", "train"), "unknown split 'train'"),
])
def test_bad_rows_are_reported_with_file_and_line(tmp_path, bad_row, problem):
    path = _write(tmp_path, [GOOD, GOOD, bad_row])
    with pytest.raises(DnaDataError, match=problem) as err:
        load_dna(path)
    assert f"{path}:4:" in str(err.value)  # the header is line 1, so the third row is line 4


def test_missing_column_is_reported(tmp_path):
    path = tmp_path / "seqs.txt"
    path.write_text("dhs_id\tsequence\tTAG\n" + f"x\t{'A' * 200}\tHepG2\n")
    with pytest.raises(DnaDataError, match=r"seqs.txt:1: header lacks column\(s\) \['data_label'\]"):
        load_dna(path)


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(dna.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps dnadiffusion==0.0.0.dev0"):
        dna.default_path()


def test_dna_task_splits_and_its_checker_uses_the_evaluation_oracle():
    from rlft.data.dna_task import DnaTask, DnaTaskConfig

    task = DnaTask(DnaTaskConfig())
    train, held_out = task.split("train"), task.split("eval")
    assert len(train) + len(held_out) < 47_872 and len(train) > 30_000 and held_out
    assert {ex.prompt for ex in train[:50]} == {""} and all(len(ex.response) == 200 for ex in train[:50])
    hepg2 = [ex.response for ex in held_out if ex.answer == "HepG2"][:200]
    others = [ex.response for ex in held_out if ex.answer != "HepG2"][:200]
    # the checker is the held-out oracle: most HepG2 sequences pass it, most others do not
    assert sum(task.classified_as_target(hepg2)) > 120 and sum(task.classified_as_target(others)) < 60
    with pytest.raises(ValueError, match="task.target='Liver'"):
        DnaTask(DnaTaskConfig(target="Liver")).data
