"""LearnerActor: one DeepSpeed rank of the learner group.

The learner is algorithm-agnostic: for each micro-batch it asks the configured algorithm for a
loss (normalised by step-global counts) and backpropagates it. DeepSpeed averages gradients
over data-parallel ranks, so each rank scales its loss by the world size: the summed gradient
then equals the gradient of the whole step's loss, whatever the split over ranks and
micro-batches.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from rlft.algorithms.base import StepCounts, add_metric_sums
from rlft.generation import eval_mode, greedy_generate
from rlft.logs import set_library_loggers
from rlft.ops.logprobs import token_logprobs
from rlft.peft import PEFT_METHODS
from rlft.peft.base import count_parameters
from rlft.roles import zero3
from rlft.roles.engine_setup import SkippingAdamW, deepspeed_config, lr_lambda, without_shared_memory_reduce

log = logging.getLogger(__name__)


def detect_device(requested: str) -> str:
    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def detect_backend(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    return "nccl" if device == "cuda" else "gloo"


class _Policy:
    """The PolicyModel view an algorithm gets of this learner's model."""

    def __init__(self, learner: "LearnerActor"):
        self._learner = learner

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        engine = self._learner.engine
        return engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def reference_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._learner.reference_logits(batch)

    def logits_and_hidden_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._learner.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   output_hidden_states=True)
        return out.logits, out.hidden_states[-1]

    def input_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        # At ZeRO-3 the call gathers the table (DeepSpeed's hooks), as any forward does; no_grad: the lookup is a constant (IFT's
        # gradient-free embedding copy); a tied table still gets gradient through the LM head.
        with torch.no_grad():
            return self._learner.engine.module.get_input_embeddings()(input_ids)

    def logits_from_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._learner.engine(inputs_embeds=embeds, attention_mask=attention_mask).logits

    def __call__(self, *args, **kwargs):
        """The model's own forward (with grad): models that are not causal LMs (rlft.families)."""
        return self._learner.engine(*args, **kwargs)

    @property
    def config(self):
        """The model's own config (e.g. the sequence length of a diffusion model)."""
        return self._learner.engine.module.config

    def reference(self, *args, **kwargs):
        """The reference model's forward, no grad (what the reference is depends on the PEFT method)."""
        module = self._learner.engine.module
        with torch.no_grad(), self._learner.peft.reference(module):
            return module(*args, **kwargs)


RENDEZVOUS_TIMEOUT_S = 600.0  # how long rank 0's store waits for the other ranks


class LearnerActor:
    """One data-parallel rank. Construct cheaply; `setup` joins the group and loads the model."""

    def __init__(self, cfg, spec, rank: int, world_size: int, model_path: str, master_addr: str,
                 master_port: int, grad_accum: int, num_threads: int | None = None):
        self.cfg = cfg
        self.model_path = model_path
        self.rank = rank
        self.world_size = world_size
        self.master = (master_addr, master_port)
        self.grad_accum = grad_accum
        self.num_threads = num_threads
        self.spec = spec  # the AlgorithmSpec itself: algorithms registered in the driver reach Ray workers
        self.peft = PEFT_METHODS[cfg.peft.method](cfg.peft)
        self.engine = None
        self.partitioned = False  # ZeRO-3: each rank holds a slice of every parameter (rlft.roles.zero3)
        self.beside = []  # ZeRO-3: the engines partitioning the PEFT method's frozen modules (a reference copy)
        self.sender = None  # rank 0's end of the weight group (sync.transport: collective), once formed

    # ----------------------------------------------------------------- set-up
    def _init_distributed(self, backend: str) -> None:
        import deepspeed
        import torch.distributed as dist

        if dist.is_initialized():
            # A previous inline learner in this process: DeepSpeed caches its groups, so a
            # one-rank group is reused rather than torn down and rebuilt.
            if dist.get_world_size() == self.world_size == 1:
                return
            raise RuntimeError(f"this process already belongs to a group of {dist.get_world_size()} ranks")
        os.environ.update(
            MASTER_ADDR=self.master[0],
            MASTER_PORT=str(self.master[1]),
            RANK=str(self.rank),
            LOCAL_RANK="0" if self.device == "cpu" else str(self.rank % max(1, torch.cuda.device_count())),
            WORLD_SIZE=str(self.world_size),
            LOCAL_WORLD_SIZE=str(self.world_size),
        )
        dist.init_process_group(backend, store=self._rendezvous_store(), rank=self.rank, world_size=self.world_size)
        without_shared_memory_reduce()
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)  # adopts the group

    def _rendezvous_store(self):
        """The ranks' key-value store, served by rank 0 on the rendezvous address only."""
        from rlft.sync.transport import connect_store, serve_store

        addr, port = self.master
        if self.rank != 0:
            return connect_store(addr, port, self.world_size, RENDEZVOUS_TIMEOUT_S)
        return serve_store(addr, self.world_size, RENDEZVOUS_TIMEOUT_S, port=port)[0]

    def _load_model(self) -> torch.nn.Module:
        """The model to train, wrapped by the PEFT method. At ZeRO-3 it is loaded partitioned
        (rlft.roles.zero3.loading_partitioned), and a reference copy is loaded again, partitioned too."""
        from rlft.families import family_for

        self.family = family_for(self.model_path)
        self.tokenizer = self.family.load_tokenizer(self.model_path)

        def load() -> torch.nn.Module:
            return self.family.load_model(self.model_path, self.dtype, head=self.spec.model_head)

        at_stage3 = self.cfg.learner.zero_stage == 3
        with zero3.loading_partitioned(self.ds_config, enabled=at_stage3):
            return self.peft.wrap(load(), self.cfg.run.seed, with_reference=self.spec.needs_reference(self.cfg),
                                  load_copy=load if at_stage3 else None)

    def setup(self) -> dict[str, Any]:
        import deepspeed

        set_library_loggers(self.cfg.runtime.log_level)  # DeepSpeed's logger, created by the import (rlft.logs)
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        torch.manual_seed(self.cfg.run.seed)
        self.device = detect_device(self.cfg.learner.device)
        backend = detect_backend(self.cfg.learner.backend, self.device)
        self._init_distributed(backend)
        from rlft.data.models import resolve_dtype

        self.dtype = resolve_dtype(self.cfg.model.dtype, self.device)
        self.ds_config = deepspeed_config(self.cfg, self.world_size, self.grad_accum, self.dtype)
        model = self._load_model()
        loaded = zero3.held_elements([model, *self.peft.outside_modules()])  # at ZeRO-3 this rank's slices
        params = [p for p in model.parameters() if p.requires_grad]
        train = self.cfg.train
        optimizer = SkippingAdamW(params, lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(train.warmup_steps, train.steps, train.schedule)
        )
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=self.ds_config)
        self.policy = _Policy(self)
        self.partitioned = zero3.is_partitioned(self.engine.module)
        if self.partitioned:
            self.beside = zero3.partition_beside(self.peft.outside_modules(), self.ds_config)
        trainable, total = count_parameters(model)
        return {"rank": self.rank, "device": self.device, "backend": backend, "dtype": str(self.dtype),
                "trainable_params": trainable, "total_params": total, "loaded_params": loaded}

    # ----------------------------------------------------------------- training
    def reference_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the reference policy (the PEFT method says what that is), no grad."""
        module = self.engine.module
        with torch.no_grad(), self.peft.reference(module):
            return module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.engine.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]], counts: StepCounts) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches; returns summed metrics."""
        if len(micro_batches) != self.grad_accum:
            raise ValueError(f"rank {self.rank}: got {len(micro_batches)} micro-batches, expected {self.grad_accum}")
        self.engine.train()
        totals: dict[str, float] = {"loss": 0.0}
        skipped_before = self.engine.skipped_steps
        for batch in micro_batches:
            loss, metrics = self.spec.micro_batch_loss(self.policy, self._to_device(batch), self.cfg.algorithm, counts)
            # DeepSpeed averages over ranks; the world-size factor turns that into the sum.
            self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
            self.engine.step()
            totals["loss"] += float(loss.detach())
            add_metric_sums(totals, metrics)
        changes = self.peft.after_step(self.engine.module, self.engine.optimizer)
        if self.rank == 0:
            totals.update(changes)
        # non-finite gradients (a NaN or inf loss on any rank: the gradients are averaged over ranks
        # before the check) skip the update on every rank alike
        totals["skipped_steps"] = float(self.engine.skipped_steps - skipped_before)
        grad_norm = self.engine.get_global_grad_norm()
        totals["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        totals["lr"] = float(self.engine.get_lr()[0])
        return totals

    @torch.no_grad()
    def proximal_logprobs(self, micro_batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """The algorithm's per-token log-probs ([B, T-1] each) of every micro-batch under the weights this
        rank holds now, without grad or dropout: the proximal policy of the passes about to run on them."""
        return self._score_each(self.spec.proximal_logprobs, micro_batches)

    @torch.no_grad()
    def learner_scores(self, micro_batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """The algorithm's `learner_scores.score` ([B, T-1] each) of every micro-batch under the weights this
        rank holds now, without grad or dropout (a KL to the reference put into the reward)."""
        return self._score_each(self.spec.learner_scores.score, micro_batches)

    def _score_each(self, score, micro_batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        with eval_mode(self.engine.module):
            return [score(self.policy, self._to_device(b), self.cfg.algorithm).cpu() for b in micro_batches]

    # ----------------------------------------------------------------- eval and outputs
    def generate(self, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> list[list[int]]:
        """Greedy completions (token ids, up to and excluding EOS) for tokenised prompts."""
        return greedy_generate(self.engine.module, self.tokenizer, prompts, max_new_tokens, batch_size, self.engine.device)

    @torch.no_grad()
    def token_logprobs(self, batch: dict[str, torch.Tensor], reference: bool = False) -> torch.Tensor:
        """Per-token log-probs of batch['labels'] under the current (or reference) policy, 0 off the mask."""
        batch = self._to_device(batch)
        with eval_mode(self.engine.module):
            if reference:
                logits = self.reference_logits(batch)
            else:
                logits = self.engine.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return token_logprobs(logits, batch["labels"])[0].cpu()

    def probe_logprobs(self, probe: dict[str, torch.Tensor]) -> torch.Tensor:
        """The parity probe's scored log-probs under the current policy (rlft.families)."""
        with eval_mode(self.engine.module):
            return self.family.probe_logprobs(self.engine.module, self._to_device(probe))

    def family_call(self, method: str, *args, **kwargs):
        """Rank 0's model in eval mode handed to the model family's `method` (e.g. held-out NELBO of a
        diffusion model when a run has no generators)."""
        with eval_mode(self.engine.module), torch.no_grad():
            return getattr(self.family, method)(self.engine.module, *args, **kwargs)

    def export_weights(self, version: int, everything: bool = False):
        """Rank 0: what generators need after an update, as a versioned payload (rlft.sync).
        everything: every change since the base model (for generators that start from the base).
        At ZeRO-3 every rank takes part (gathering is collective) and the others return None."""
        if self.rank != 0 and not self.partitioned:
            return None
        self._settle()
        if everything:
            self.peft.mark_all_changed(self.engine.module)
        if self.cfg.sync.weights == "merged":
            payload = self._export_merged(version, self._effective_weights())
        else:
            with zero3.gathered(self._trained_parameters(), enabled=self.partitioned):
                payload = self.peft.export(self.engine.module, version) if self.rank == 0 else None
        if payload is None:
            return None
        self.exported = {"kind": payload.kind, "version": payload.version, "fingerprint": payload.fingerprint,
                         "num_bytes": payload.num_bytes}
        return payload

    def _export_merged(self, version: int, tensors: dict[str, torch.Tensor]):
        from rlft.sync.payload import DensePayload

        if self.rank != 0:
            return None
        if self.cfg.sync.transport == "collective":
            return self.broadcast_weights(version, tensors)
        return DensePayload.build(version, tensors, self._bucket_bytes())

    @torch.no_grad()
    def _effective_weights(self) -> dict[str, torch.Tensor]:
        """The policy's every weight as the base model holds it; at ZeRO-3 gathered in buckets, kept by rank 0."""
        module = self.engine.module
        if not self.partitioned:
            return self.peft.effective_weights(module)
        return zero3.gathered_weights(module, self.peft.effective_weights, self.peft.export_unit, self._gather_bytes(),
                                      keep=self.rank == 0)

    def _settle(self) -> None:
        if self.partitioned:
            zero3.settle(self.engine)

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.engine.module.parameters() if p.requires_grad]

    def last_export(self) -> dict:
        """Rank 0: kind, version, fingerprint and size of the payload exported last (the controller checks
        the generators against it without fetching the payload's bytes; None on the other ranks)."""
        if self.rank != 0:
            return None
        if self.sender is not None and not self.exported["fingerprint"]:
            from rlft.sync.payload import combine_fingerprints

            self.exported["fingerprint"] = combine_fingerprints(self.sender.finish())  # once every bucket is sent
        return self.exported

    # ----------------------------------------------------------------- the weight group (sync.transport: collective)
    def open_weight_group(self, world_size: int, timeout_s: float) -> dict[str, Any]:
        """Rank 0: serve a process group of its own for the generators' engine workers to join (rlft.sync.transport);
        where it meets and its backend (the learners': gloo on CPU, NCCL on GPU)."""
        from rlft.sync.transport import WeightSender

        if self.sender is not None:
            self.sender.close()  # a group with a replaced generator in it: formed again from scratch
        backend = detect_backend(self.cfg.learner.backend, self.device)
        self.sender = WeightSender(backend, self.master[0], timeout_s)
        return {"addr": self.master[0], "port": self.sender.open(world_size), "backend": backend}

    def weight_group_ready(self) -> None:
        self.sender.finish()

    def broadcast_weights(self, version: int, tensors: dict[str, torch.Tensor]):
        """Rank 0: the merged weights broadcast over the weight group, in buckets; returns at once with their
        layout (what the generators receive into), the sending goes on until `last_export`."""
        if self.sender is None:
            raise RuntimeError("sync.transport=collective: learner rank 0 has no weight group yet (rlft.sync.transport."
                               "connect forms it before the first publish)")
        return self.sender.start(version, tensors, self._bucket_bytes())

    def _bucket_bytes(self) -> int | None:
        """sync.bucket_mb in bytes (None: one bucket, the whole model)."""
        return self.cfg.sync.bucket_mb << 20 if self.cfg.sync.bucket_mb else None

    def _gather_bytes(self) -> int:
        """ZeRO-3: the most parameter bytes an export or checkpoint gathers at once (learner.zero3_live_mb)."""
        return self.cfg.learner.zero3_live_mb << 20

    def save(self, out_dir: str) -> str | None:
        """Rank 0 writes the checkpoint (params are replicated up to ZeRO-2; at ZeRO-3 every rank gathers)."""
        if self.partitioned:
            self._settle()
            return zero3.save_policy(self.peft, self.engine.module, self.tokenizer, Path(out_dir), self.rank,
                                     self._gather_bytes())
        if self.rank != 0:
            return None
        self.peft.save(self.engine.module, self.tokenizer, Path(out_dir))
        return out_dir

    def save_state(self, folder: str) -> None:
        """Every rank: what exact resume needs (rlft.roles.learner_state)."""
        from rlft.roles.learner_state import save_rank_state

        save_rank_state(self.engine, self.peft, self.rank, self.world_size, self.cfg.learner.zero_stage, Path(folder))

    def load_state(self, folder: str) -> None:
        from rlft.roles.learner_state import load_rank_state

        load_rank_state(self.engine, self.peft, self.rank, self.world_size, self.cfg.learner.zero_stage, Path(folder))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Copies of the trainable parameters (for invariance checks and tests; at ZeRO-3 every rank calls it)."""
        self._settle()
        with zero3.gathered(self._trained_parameters(), enabled=self.partitioned):
            return {n: p.detach().float().cpu().clone() for n, p in self.engine.module.named_parameters()
                    if p.requires_grad}

    def memory(self) -> dict[str, float]:
        from rlft.memory import process_memory

        return process_memory()

    def close(self) -> None:
        """Release the engine; the process group stays (remote ranks exit, inline ones reuse it)."""
        self.engine = None
