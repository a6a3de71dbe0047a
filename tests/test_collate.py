"""Tokenisation into SFT rows, padding and sharding over ranks / micro-batches."""

import pytest

from rlft.data.collate import pad_rows, shard_micro_batches
from rlft.data.sampler import EpochSampler
from rlft.ops.logprobs import IGNORE_INDEX


def test_pad_rows_masks_padding():
    rows = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}, {"input_ids": [5], "labels": [IGNORE_INDEX]}]
    batch = pad_rows(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX] * 3]


def test_one_rank_sees_the_same_micro_batches_as_two():
    rows = list(range(16))
    two = shard_micro_batches(rows, ranks=2, micro_batch_size=4)
    one = shard_micro_batches(rows, ranks=1, micro_batch_size=4)
    assert two == [[[0, 1, 2, 3], [4, 5, 6, 7]], [[8, 9, 10, 11], [12, 13, 14, 15]]]
    assert one == [two[0] + two[1]]


def test_shard_rejects_uneven_split():
    with pytest.raises(ValueError, match="do not split"):
        shard_micro_batches(list(range(10)), ranks=2, micro_batch_size=4)


def test_sampler_is_seeded_resumable_and_covers_each_epoch():
    a = EpochSampler(10, seed=3)
    first = a.next_indices(7)
    state = a.state()
    rest = a.next_indices(8)
    assert sorted(first + rest[:3]) == list(range(10))  # one full epoch before any repeat
    b = EpochSampler(10, seed=3, **state)
    assert b.next_indices(8) == rest
    assert EpochSampler(10, seed=4).next_indices(7) != first
