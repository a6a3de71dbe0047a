"""vLLM worker extension: apply weight payloads from bytes, no file system involved, or receive them
over the weight group (rlft.sync.transport, `sync.transport: collective`).

vLLM 0.32's LoRARequest only names a folder, so the generator passes the safetensors bytes to
every worker through `LLM.collective_rpc` (bytes survive its msgpack transport; dicts of tensors
do not) and registers the adapter directly with the worker's LoRA manager. The worker returns
the fingerprint of the tensors it actually deserialised, which rlft.sync compares with the
learner's.
"""

from __future__ import annotations

import logging


class WeightSyncExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`); `self` is the worker."""

    def rlft_add_lora(self, lora_id: int, payload: bytes, config: dict, replaces: int | None = None) -> str:
        """Register adapter `lora_id` from serialised tensors, then drop adapter `replaces` (one round trip)."""
        from vllm.lora.lora_model import LoRAModel
        from vllm.lora.peft_helper import PEFTHelper

        from rlft.sync.payload import fingerprint, load_tensors

        tensors = load_tensors(payload)
        received = fingerprint(tensors)  # before vLLM folds the scaling into B in place
        worker_manager = self.model_runner.lora_manager
        helper = PEFTHelper.from_dict(
            {**config, "vllm_max_position_embeddings": worker_manager.max_position_embeddings}
        )
        helper.validate_legal(worker_manager.lora_config)
        lora = LoRAModel.from_lora_tensors(
            lora_id, tensors, helper, device="cpu", dtype=worker_manager.lora_config.lora_dtype,
            model_vocab_size=worker_manager.vocab_size,
        )
        manager = worker_manager._adapter_manager
        manager.remove_adapter(lora_id)
        if len(manager) + 1 > manager.capacity:
            manager.remove_oldest_adapter()
        if not manager.add_adapter(lora):
            raise RuntimeError(f"vLLM refused LoRA adapter {lora_id}")
        if replaces is not None and replaces != lora_id:  # the same id again: a re-send, already replaced
            manager.remove_adapter(replaces)
        return received

    def rlft_load_dense(self, payload: bytes) -> str:
        """Reload every weight in place from serialised tensors in checkpoint naming (vLLM repacks them
        for its kernels); returns the fingerprint of what was received."""
        from rlft.sync.payload import fingerprint, load_tensors

        tensors = load_tensors(payload)
        received = fingerprint(tensors)
        self._rlft_reload(tensors)
        return received

    def rlft_update_weights(self, payload: bytes, kind: str) -> str:
        """Apply a `partial` (whole tensors) or `sparse` (single entries) payload; returns the fingerprint
        of what was received. Engines that keep their weights as loaded (GPU) take it through vLLM's
        checkpoint-coordinate patches; CPU engines, whose linear weights were repacked, through the kept
        checkpoint tensors and a reload of the touched layers."""
        from rlft.sync.payload import decode_sparse, fingerprint, load_tensors

        tensors = load_tensors(payload)
        received = fingerprint(tensors)
        updates = decode_sparse(tensors) if kind == "sparse" else tensors
        model = self.model_runner.model
        if weights_repacked(model):
            shadow = self._rlft_shadow()
            touched = shadow.scatter(updates) if kind == "sparse" else shadow.replace(updates)
            self._rlft_reload(shadow.layer_tensors(touched))
        else:
            from vllm.model_executor.model_loader.checkpoint_weight_patch import load_checkpoint_weight_patches

            load_checkpoint_weight_patches(model, checkpoint_patches(updates, kind, self.model_runner.model_config.dtype))
        return received

    # ----------------------------------------------------------------- the weight group (rlft.sync.transport)
    def rlft_join_weight_group(self, addr: str, port: int, first_rank: int, world_size: int, backend: str,
                               timeout_s: float) -> None:
        """Start joining learner rank 0's weight group as rank `first_rank` + this worker's rank; returns at
        once (the group forms once every rank joins: `rlft_weight_group_ready` waits for it)."""
        import threading

        from rlft.sync.transport import connect_store, open_group

        rank = first_rank + getattr(self, "rank", 0)
        self._rlft_group, self._rlft_group_error = None, None

        def join():
            try:
                store = connect_store(addr, port, world_size, timeout_s)
                self._rlft_group = open_group(backend, store, addr, rank, world_size, timeout_s)
            except BaseException as err:  # raised by rlft_weight_group_ready, in the caller's thread
                self._rlft_group_error = err

        self._rlft_joining = threading.Thread(target=join, name="rlft-weight-group", daemon=True)
        self._rlft_joining.start()

    def rlft_weight_group_ready(self) -> int:
        self._rlft_joining.join()
        if self._rlft_group_error is not None:
            raise self._rlft_group_error
        return self._rlft_group.rank()

    def rlft_receive_dense(self, wire: list) -> str:
        """Receive a dense payload broadcast by learner rank 0 over the weight group, bucket by bucket into
        the engine's weights; the fingerprint of what arrived."""
        import torch

        from rlft.sync.transport import decode_buckets, receive_buckets

        device = getattr(self, "device", None) or torch.device("cpu")
        return receive_buckets(self._rlft_group, decode_buckets(wire), device, self._rlft_reload)

    def _rlft_shadow(self):
        from rlft.sync.shadow import CheckpointShadow

        if getattr(self, "_rlft_checkpoint", None) is None:
            config = self.model_runner.model_config
            packed = getattr(self.model_runner.model, "packed_modules_mapping", {})
            self._rlft_checkpoint = CheckpointShadow(config.model, config.dtype, packed)
        return self._rlft_checkpoint

    def _rlft_reload(self, tensors: dict) -> None:
        # Layers without weights in `tensors` (rotary buffers, a head tied to the embedding, every
        # layer a partial update leaves alone) keep theirs; vLLM warns about each at every reload.
        reload_log = logging.getLogger("vllm.model_executor.model_loader.reload")
        level = reload_log.level
        reload_log.setLevel(logging.ERROR)
        try:
            self.model_runner.reload_weights(weights_iterator=list(tensors.items()), is_checkpoint_format=True)
        finally:
            reload_log.setLevel(level)
        refresh_tied_head(self.model_runner.model)


def weights_repacked(model) -> bool:
    """Whether the engine dropped weights after preparing them for its kernels (the CPU build keeps
    only packed copies of its linear weights, leaving empty parameters)."""
    return any(p.numel() == 0 for p in model.parameters())


def checkpoint_patches(updates: dict, kind: str, dtype) -> list:
    """vLLM checkpoint-coordinate patches: whole tensors (`partial`) or positions and values (`sparse`)."""
    from vllm.model_executor.model_loader.checkpoint_weight_patch import CheckpointWeightPatch

    if kind == "sparse":
        return [CheckpointWeightPatch(name, tuple(u.shape), dtype, u.values.to(dtype).reshape(-1), u.index)
                for name, u in updates.items()]
    return [CheckpointWeightPatch(name, tuple(t.shape), dtype, t.to(dtype).reshape(-1)) for name, t in updates.items()]


def refresh_tied_head(model) -> None:
    """Re-tie and re-pack an LM head tied to the input embedding. On CPU a head keeps a packed copy of its
    weight for the logits GEMM; a tied head loads no weight of its own, so the reload (which re-packs
    every layer it loads) leaves that copy stale and the logits drift from the learner's as the
    embedding trains (full fine-tuning)."""
    head, embed = getattr(model, "lm_head", None), getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or embed is None or not getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        return
    head.weight = embed.weight
    head.quant_method.process_weights_after_loading(head)
