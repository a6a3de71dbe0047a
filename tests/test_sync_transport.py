"""sync.transport: collective (rlft/sync/transport.py): merged weights broadcast from learner rank 0 into
the engine workers over a gloo group of their own, checked by the same fingerprint and parity probe."""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch

from rlft.sync import transport
from rlft.sync.payload import DensePayload

# The broadcast test's ranks are spawned processes that import this file: what only the run tests
# need (the controller, DeepSpeed, vLLM's config) is imported inside them.


def _weights() -> dict[str, torch.Tensor]:
    """Three decoder layers and an embedding, in two dtypes and odd sizes (slots are padded to alignment)."""
    gen = torch.Generator().manual_seed(0)
    out = {"model.embed_tokens.weight": torch.randn(101, 33, generator=gen)}
    for i in range(3):
        out[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(300, 201, generator=gen).to(torch.bfloat16)
        out[f"model.layers.{i}.input_layernorm.weight"] = torch.randn(7, generator=gen)
    return out


BUCKET_BYTES = 130_000  # one decoder layer (121 KB) per bucket: four buckets


def _rank(rank: int, port, queue) -> None:
    """One member of a two-rank gloo group: rank 0 sends _weights() in buckets, rank 1 receives them."""
    if rank == 0:
        store, port = transport.serve_store("127.0.0.1", 2, 60)
        queue.put(port)
    else:
        store = transport.connect_store("127.0.0.1", port, 2, 60)
    group = transport.open_group("gloo", store, "127.0.0.1", rank, 2, 60)
    layouts = transport.layouts(_weights(), BUCKET_BYTES)
    if rank == 0:
        queue.put(("sent", transport.send_buckets(group, _weights(), layouts)))
    else:
        loaded, expected = [], _weights()
        # each bucket as it reaches `load`: its names, and whether each tensor arrived equal, dtype included
        found = transport.receive_buckets(group, layouts, "cpu", lambda ts: loaded.append(
            {k: v.dtype == expected[k].dtype and torch.equal(v, expected[k]) for k, v in ts.items()}))
        queue.put(("received", found, loaded))
    queue.close()
    queue.join_thread()
    os._exit(0)  # no interpreter teardown racing the store's daemon thread


def test_bucketed_broadcast_arrives_whole_in_order_with_the_object_store_fingerprint():
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    sender = ctx.Process(target=_rank, args=(0, None, queue))
    sender.start()
    receiver = ctx.Process(target=_rank, args=(1, queue.get(timeout=60), queue))
    receiver.start()
    results = dict((r[0], r[1:]) for r in (queue.get(timeout=60), queue.get(timeout=60)))
    sender.join(30), receiver.join(30)
    sent, = results["sent"]
    fingerprint, loaded = results["received"]
    # buckets reach the engine in the order they were laid out, each whole decoder layers, every byte equal
    assert [list(bucket) for bucket in loaded] == [[slot[0] for slot in slots]
                                                   for slots, _ in transport.layouts(_weights(), BUCKET_BYTES)]
    assert [list(bucket) for bucket in loaded] == [["model.embed_tokens.weight"]] + [
        [f"model.layers.{i}.input_layernorm.weight", f"model.layers.{i}.mlp.up_proj.weight"] for i in range(3)]
    assert all(all(bucket.values()) for bucket in loaded)
    # both ends hash the same bytes, and the digest is the one a dense object-store payload of them carries
    object_store = DensePayload.build(1, _weights(), BUCKET_BYTES)
    assert fingerprint == transport.combine_fingerprints(sent) == object_store.fingerprint


def test_bucket_layout_aligns_slots_that_view_one_buffer():
    weights = _weights()
    slots, size = transport.bucket_layout(weights, ["model.layers.0.input_layernorm.weight",
                                                    "model.layers.0.mlp.up_proj.weight"])
    assert [s[3] for s in slots] == [0, 64] and size == transport._aligned(64 + 300 * 201 * 2)
    buffer = torch.zeros(size, dtype=torch.uint8)
    views = transport.views(buffer, slots)
    assert views["model.layers.0.mlp.up_proj.weight"].data_ptr() == buffer.data_ptr() + 64
    for name, view in views.items():  # what a worker receives lands in the buffer, typed and shaped
        assert view.dtype == weights[name].dtype and view.shape == weights[name].shape
        transport.as_bytes(view).copy_(transport.as_bytes(weights[name]))
    assert all(torch.equal(transport.views(buffer, slots)[name], weights[name]) for name in views)


def test_collective_sync_in_a_real_run_matches_fingerprints_probe_and_catches_corruption(tmp_path, monkeypatch):
    """Inline run, LoRA merged, the tiny model (1.8 MB in float32) in 1 MiB buckets (two): a trained update
    is broadcast into the generator's engine worker (its own process) and passes the fingerprint check and
    the probe; a resync forms the group again and re-sends; a bit flipped on the wire is caught by the
    fingerprint."""
    from rlft.control import Controller
    from rlft.sync.protocol import SyncError
    from tests.helpers import rl_config

    cfg = rl_config(tmp_path, "collective", sync={"weights": "merged", "transport": "collective", "bucket_mb": 1},
                    train={"lr": 1e-2})
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        generator = ctl.roles["generator"].members[0]
        found = ctl.iteration(1)  # generate, train (lr 1e-2: the policy moves), publish over a new group
        assert found["sync/parity_max_abs_diff"] < 1e-3
        assert found["sync/bytes"] > 1_000_000  # the whole tiny model, not an adapter
        assert generator.version == 1 and generator.weights.kind == "dense"
        first_group = ctl.sync.group
        assert first_group["backend"] == "gloo" and first_group["world_size"] == 2
        assert ctl.learners.members[0].last_export()["fingerprint"]  # the learner's digest of what it sent
        buckets, load = [], generator.load_weights
        monkeypatch.setattr(generator, "load_weights", lambda payload: buckets.append(len(payload.buckets)) or load(payload))
        resent = ctl.sync.resync()  # a group of its own again, the whole policy re-sent, verified, probed
        assert ctl.sync.group["port"] != first_group["port"] and resent["sync/parity_max_abs_diff"] < 1e-3
        assert buckets == [2]

        sent = []

        def flip_a_bit_of_the_first_tensor(group, tensor):
            if not sent:  # what goes on the wire; the learner still hashes the tensor it meant to send
                tensor = transport.as_bytes(tensor.clone())
                tensor[-1] ^= 0x40
            sent.append(tensor)
            return original(group, tensor)

        original = transport.broadcast
        monkeypatch.setattr(transport, "broadcast", flip_a_bit_of_the_first_tensor)
        with pytest.raises(SyncError, match=r"generator 0 loaded dense weights version \d+ with fingerprint .* but the "
                                            "learner published"):
            ctl.sync.publish()
    finally:
        ctl.close()


@pytest.mark.parametrize("over, message", [
    ({"sync": {"transport": "collective"}}, r"sync\.transport.*needs sync\.weights=merged"),
    ({"sync": {"transport": "collective", "weights": "merged"}, "generator": {"count": 2}},
     r"sync\.transport.*inline mode calls its 2 generators one after another"),
    ({"sync": {"transport": "collective", "weights": "merged"}, "generator": {"count": 1, "engine_processes": "in_actor"}},
     r"sync\.transport.*engine in processes of its own"),
    ({"sync": {"transport": "nccl"}}, r"key 'sync\.transport'"),
])
def test_collective_transport_refuses_layouts_it_cannot_serve(tmp_path, over, message):
    from rlft.config import ConfigError
    from tests.helpers import rl_config

    with pytest.raises(ConfigError, match=message):
        rl_config(tmp_path, "bad", **over)
