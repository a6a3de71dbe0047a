"""Causal language models (Hugging Face folders): the family every text recipe trains."""

from __future__ import annotations

import torch

from rlft.data.collate import encode_sft, pad_rows, uses_chat_template
from rlft.data.lengths import check_lengths
from rlft.eval_scoring import eval_metrics, score_greedy
from rlft.ops.logprobs import IGNORE_INDEX, token_logprobs
from rlft.sources.rollouts import generate, reward_metrics, score


class CausalLM:
    name = "causal_lm"

    # ----------------------------------------------------------------- loading (controller and learners)
    def load_tokenizer(self, model_path):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_path)

    def uses_chat(self, tokenizer, mode: str) -> bool:
        return uses_chat_template(tokenizer, mode)

    def load_model(self, model_path, dtype: torch.dtype) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)

    def check_data(self, cfg, spec, model_path, tokenizer, chat, train_examples, eval_examples) -> None:
        check_lengths(cfg, spec, model_path, tokenizer, chat, train_examples, eval_examples)

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

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, ctrl, step: int) -> dict[str, float]:
        """Greedy held-out accuracy: by the generators (current version) when there are any, else learner rank 0."""
        cfg = ctrl.cfg.eval
        if not ctrl.eval_examples:
            return {}
        if "generator" in ctrl.roles:
            ctrl.settle()
            if "environment" in ctrl.roles:  # multi-turn episodes, greedy
                from rlft.sources.episodes import episode_metrics, generate_episodes

                rollouts = generate_episodes(ctrl.roles["generator"], ctrl.roles["environment"], ctrl.tokenizer,
                                             ctrl.chat, ctrl.eval_examples, 1, cfg.max_new_tokens, 0.0, 1.0, seed=0,
                                             max_turns=ctrl.cfg.rollout.max_turns)
            else:
                rollouts = generate(ctrl.roles["generator"], ctrl.tokenizer, ctrl.chat, ctrl.eval_examples, 1,
                                    cfg.max_new_tokens, 0.0, 1.0, seed=0)
            score(ctrl.roles["reward"], rollouts)
            found = reward_metrics(rollouts, ctrl.task.name, prefix="eval")
            metrics = {**eval_metrics([r.example for r in rollouts], [float(r.correct) for r in rollouts],
                                      [len(r.completion_ids) for r in rollouts]), "eval/reward": found["eval/mean"]}
            if "environment" in ctrl.roles:  # each reward component, and how the episodes went
                metrics.update({k: v for k, v in found.items() if k != "eval/mean" and not k.startswith("eval/accuracy_")},
                               **episode_metrics(rollouts, "eval"))
            return metrics
        scores, lengths = score_greedy(
            ctrl.task, ctrl.tokenizer, ctrl.eval_examples, ctrl.chat, cfg,
            lambda chunk: ctrl.learners.call_one(0, "generate", chunk, cfg.max_new_tokens, cfg.batch_size),
            description=f"eval @ step {step}", show_progress=ctrl.show_progress,
        )
        return eval_metrics(ctrl.eval_examples, scores, lengths)
