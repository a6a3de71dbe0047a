"""Token lengths against the limits of a run: every prompt must fit train.max_length with room for
the tokens sampled after it, and train.max_length must fit the model's context.

`check_lengths` is the check of tokenised prompts (text models; a model family with a check of its
own, as mdlm's, replaces it). The control layer's `check_run` (rlft.control.validation) calls it
before any role starts, with the tokens the run's data source samples after a training prompt
(`sampled_tokens` of the source, rlft.sources), and turns its ValueError into a RunError.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlft.data.collate import encode_prompt


def model_context(model_path: Path) -> int | None:
    config = json.loads((Path(model_path) / "config.json").read_text())
    return config.get("max_position_embeddings")


def _where(split: str, index: int, example) -> str:
    source = example.meta.get("source") if isinstance(example.meta, dict) else None
    return f"{split} example {index}" + (f" ({source})" if source else "")


def check_lengths(cfg, model_path, tokenizer, chat: bool, train_examples, eval_examples, sampled_tokens: int) -> None:
    """Every prompt fits train.max_length (with room for the `sampled_tokens` a training row holds after
    its prompt, and each eval prompt the model's context with eval.max_new_tokens), and train.max_length
    fits the model's context."""
    max_length = cfg.train.max_length
    context = model_context(model_path)
    if context is not None and max_length > context:
        raise ValueError(f"train.max_length={max_length} is longer than the model's context "
                         f"(max_position_embeddings={context} in {model_path}/config.json); lower train.max_length")
    limits = (("train", train_examples, sampled_tokens, max_length, "train.max_length"),
              ("eval", eval_examples, cfg.eval.max_new_tokens, context, "the model's context"))
    for split, examples, room, limit, name in limits:
        if limit is None:
            continue
        for index, example in enumerate(examples):
            length = len(encode_prompt(tokenizer, example.prompt, chat))
            if length + room > limit:
                raise ValueError(
                    f"{_where(split, index, example)}: prompt of {length} tokens + {room} more does not fit "
                    f"{name} ({limit}); raise train.max_length (model context: {context}), lower the "
                    "generated tokens, or drop the example"
                )
