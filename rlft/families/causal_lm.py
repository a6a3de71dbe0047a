"""Causal language models (Hugging Face folders): the family every text recipe trains."""

from __future__ import annotations

import torch

from rlft.data.collate import encode_sft, pad_rows, pad_token_id, uses_chat_template
from rlft.eval_scoring import eval_metrics, score_greedy
from rlft.ops.logprobs import IGNORE_INDEX, token_logprobs


class CausalLM:
    name = "causal_lm"
    # What `load_model` can put on the network (AlgorithmSpec.model_head): the next-token head, or one
    # scalar per sequence read at the last non-pad token (a reward model), or one scalar per token (a
    # critic's values: "value").
    heads = ("lm", "score", "value")
    # No check of its own: the run's check of prompt lengths against train.max_length and the
    # model's context (rlft.data.lengths, by rlft.control.validation) is the one a text model needs.
    check_data = None

    # ----------------------------------------------------------------- loading (controller and learners)
    def load_tokenizer(self, model_path):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_path)

    def uses_chat(self, tokenizer, mode: str) -> bool:
        return uses_chat_template(tokenizer, mode)

    def load_model(self, model_path, dtype: torch.dtype, head: str = "lm") -> torch.nn.Module:
        """The causal LM, or with head="score" the same body under a new scalar head
        (AutoModelForSequenceClassification, num_labels=1; a score folder loads its trained head), or with
        head="value" under a new per-token scalar head (AutoModelForTokenClassification, num_labels=1). The
        score is read at the last token that is not the pad token, so the config's pad id is the one
        batches are padded with (the tokenizer's, else EOS: Controller.pad_id)."""
        if head == "lm":
            from transformers import AutoModelForCausalLM

            return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        if head == "value":
            from transformers import AutoConfig, AutoModelForTokenClassification

            config = AutoConfig.from_pretrained(model_path, num_labels=1)
            config.classifier_dropout = 0.0  # one value per position, no dropout (a critic regresses; default 0.1)
            return AutoModelForTokenClassification.from_pretrained(model_path, config=config, dtype=dtype)
        if head != "score":
            raise ValueError(f"model head {head!r}: the causal_lm family has {', '.join(self.heads)}")
        from transformers import AutoModelForSequenceClassification

        tokenizer = self.load_tokenizer(model_path)
        pad_id = pad_token_id(tokenizer)
        return AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, dtype=dtype,
                                                                  pad_token_id=pad_id)

    @staticmethod
    def sequence_scores(module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar scores [B] of a "score"-head model for padded rows (learner side, eval mode, no grad)."""
        device = next(module.parameters()).device
        out = module(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        return out.logits[:, 0].float().cpu()

    # ----------------------------------------------------------------- the parity probe
    def probe(self, ctrl) -> dict[str, torch.Tensor]:
        """A fixed sequence (held-out prompt + reference), scored at every position."""
        ex = (ctrl.eval_examples or ctrl.train_examples)[0]
        row = encode_sft(ctrl.tokenizer, ex.prompt, ex.response or ex.answer or "", ctrl.cfg.train.max_length, ctrl.chat)
        row["labels"] = list(row["input_ids"])
        return pad_rows([row], ctrl.pad_id())

    @torch.no_grad()
    def probe_logprobs(self, module, probe: dict[str, torch.Tensor], reference=None) -> torch.Tensor:
        """Log-probs of the probe's scored tokens under `module` (learner side)."""
        logits = module(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
        logprobs, mask = token_logprobs(logits, probe["labels"])
        return logprobs[0][mask[0].bool()].cpu()

    @staticmethod
    def scored_positions(probe: dict[str, torch.Tensor]) -> torch.Tensor:
        """Which next-token positions of the probe count (generator side: vLLM scores them all)."""
        return probe["labels"][0, 1:] != IGNORE_INDEX

    # ----------------------------------------------------------------- evaluation without generators
    def evaluate_on_learner(self, learners, task, examples: list, cfg, *, tokenizer, chat: bool, step: int,
                            show_progress: bool) -> dict[str, float]:
        """Greedy held-out accuracy by learner rank 0 (the sources' evaluation when a run has no generators)."""
        if not examples:
            return {}
        scores, lengths = score_greedy(
            task, tokenizer, examples, chat, cfg.eval,
            lambda chunk: learners.call_lead("generate", chunk, cfg.eval.max_new_tokens, cfg.eval.batch_size),
            description=f"eval @ step {step}", show_progress=show_progress,
        )
        return eval_metrics(examples, scores, lengths)
