"""A learned reward: a sequence-classification model's scalar score of prompt + completion.

The model is any Hugging Face folder that `AutoModelForSequenceClassification` loads with one
output (num_labels=1), e.g. the final checkpoint of a `reward_model` run (rlft.algorithms.reward_model).
Each reward actor loads it once, on the device it detects (`device: auto`: CUDA when the actor sees
a GPU, else the CPU) in `dtype`, and scores a batch's rollouts `batch_size` at a time.

A rollout is scored as the reward model was trained (rlft.data.collate.encode_sft with the reward
model's own tokenizer): the task prompt (in the tokenizer's chat template when `chat_template` says
so) + the completion text + EOS, right-padded; the model reads its score at the last non-pad token.
The completion is cut to `max_length` tokens with its prompt (never the prompt: a prompt that leaves
no room is an error). The value is the raw score r, or with `transform: sigmoid`, sigma(r - offset):
under the Bradley-Terry model, the probability that the completion beats one scored `offset`
(a bounded reward in (0, 1)). Group-normalised advantages (GPPO) are unchanged by adding a constant
to every reward, so the raw score needs no centring there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rlft.rewards.base import ComponentConfig, ComponentSpec, ComponentValue
from rlft.types import Rollout


class RewardModelRewardConfig(ComponentConfig):
    name: Literal["reward_model"] = "reward_model"
    path: str = Field(..., description="HF sequence-classification folder with one output (a reward_model run's "
                                       "checkpoints/final); a relative path is taken from where rlft is started.")
    batch_size: int = Field(64, ge=1, description="Sequences per forward pass.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the reward actor runs the model (auto: CUDA when the actor sees a GPU, else CPU).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights' dtype (auto: float32 on the CPU, bfloat16 on a GPU).")
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="Wrap the prompt in the reward model tokenizer's chat template, as data.chat_template "
                            "did when the reward model was trained.")
    max_length: int | None = Field(
        None, ge=2, description="Tokens of prompt + completion + EOS (the completion is cut); None: the model's "
                                "max_position_embeddings.")
    transform: Literal["raw", "sigmoid"] = Field(
        "raw", description="raw: the score r; sigmoid: sigma(r - offset), in (0, 1).")
    offset: float = Field(0.0, description="transform=sigmoid: the score that maps to 0.5.")

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return str(Path(value).expanduser().absolute())  # actors may start elsewhere

    @model_validator(mode="after")
    def _offset_is_for_sigmoid(self):
        if self.offset and self.transform != "sigmoid":
            raise ValueError(f"offset={self.offset} applies to transform=sigmoid, not {self.transform}")
        return self


def load_scorer(cfg: RewardModelRewardConfig):
    """(model in eval mode, tokenizer, device) of the folder cfg.path (FileNotFoundError / ValueError
    naming the folder and the fix)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from rlft.data.models import resolve_dtype

    folder = Path(cfg.path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"reward component reward_model: {folder} holds no model (no config.json); train "
                                "one first (e.g. rlft train configs/rm_tiny_arith.yaml) and give its checkpoints/final")
    config = AutoConfig.from_pretrained(folder)
    if config.num_labels != 1:
        raise ValueError(f"reward component reward_model: {folder} has {config.num_labels} outputs; a reward model "
                         "has one (num_labels=1)")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=resolve_dtype(cfg.dtype, device))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if model.config.pad_token_id is None:  # the score is read at the last non-pad token
        from rlft.data.collate import pad_token_id

        model.config.pad_token_id = pad_token_id(tokenizer)
    return model.to(device).eval(), tokenizer, device


class RewardModelReward:
    batched = True  # called once with a whole batch of rollouts (rlft.rewards.base.component_values)

    def __init__(self, cfg: RewardModelRewardConfig, task):
        from rlft.data.collate import uses_chat_template

        self.cfg = cfg
        self.model, self.tokenizer, self.device = load_scorer(cfg)
        self.chat = uses_chat_template(self.tokenizer, cfg.chat_template)
        self.max_length = cfg.max_length or self.model.config.max_position_embeddings

    def scores(self, prompts: list[str], completions: list[str]) -> list[float]:
        """The model's raw score of each prompt + completion, batch_size at a time."""
        import torch

        from rlft.data.collate import encode_sft, pad_rows

        pad_id = self.model.config.pad_token_id
        out: list[float] = []
        for start in range(0, len(prompts), self.cfg.batch_size):
            rows = [encode_sft(self.tokenizer, p, c, self.max_length, self.chat)
                    for p, c in zip(prompts[start : start + self.cfg.batch_size],
                                    completions[start : start + self.cfg.batch_size])]
            batch = pad_rows(rows, pad_id)
            with torch.no_grad():
                logits = self.model(input_ids=batch["input_ids"].to(self.device),
                                    attention_mask=batch["attention_mask"].to(self.device)).logits
            out += logits[:, 0].float().cpu().tolist()
        return out

    def value(self, score: float) -> float:
        import math

        if self.cfg.transform == "sigmoid":
            return 1.0 / (1.0 + math.exp(-(score - self.cfg.offset)))
        return score

    def __call__(self, rollouts: list[Rollout]) -> list[ComponentValue]:
        raw = self.scores([r.example.prompt for r in rollouts], [r.text for r in rollouts])
        return [ComponentValue(self.value(s)) for s in raw]


SPEC = ComponentSpec("reward_model", RewardModelRewardConfig, RewardModelReward)
