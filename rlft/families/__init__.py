"""Model families: what depends on the kind of model a run trains (docs/design.md#model-families).

The loop, the roles and the sync protocol are the same for every model; what differs is how a
model folder is loaded (model, tokenizer, chat template), its own data check, what the parity
probe scores, and the generation and scoring hooks evaluation uses. Evaluation itself is the
data source's (rlft.sources: the source that made the training data evaluates the held-out
examples the same way); a source without generators asks the family to evaluate on learner rank
0 (`evaluate_on_learner`). Families know nothing of sources, of the controller or of run folders.
A family is found from the base model's folder (`family_for`), so a recipe names only its model:

  causal_lm  Hugging Face causal language models (vLLM generators; on the learner: greedy
             accuracy on the task)
  mdlm       masked discrete diffusion models over DNA (rlft.diffusion; diffusion generators;
             k-mer and motif statistics of samples; on the learner: held-out NELBO)
"""

from __future__ import annotations

import json
from pathlib import Path

from rlft.registry import Registry

MODEL_FAMILIES: Registry = Registry("model family", {
    "causal_lm": "rlft.families.causal_lm:CausalLM",
    "mdlm": "rlft.families.mdlm:MaskedDiffusion",
})


def family_name(model_path: str | Path) -> str:
    """The family of a model folder: the `model_type` of its config.json when a family has that name
    ("mdlm"), else a causal LM (Hugging Face model types: llama, qwen2, ...)."""
    config = Path(model_path) / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    return model_type if model_type in MODEL_FAMILIES.names() and model_type != "causal_lm" else "causal_lm"


def family_for(model_path: str | Path):
    return MODEL_FAMILIES[family_name(model_path)]()
