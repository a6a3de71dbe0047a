"""A tiny Llama model and a character-level tokenizer, built offline from a config.

Used by tests, CI and CPU recipes: it learns 2-digit addition in about a minute on 2 cores and
loads in transformers, PEFT and vLLM like any HF model folder.

Tokenizer: every printable ASCII character and "\\n" is one token, after the special tokens
<pad>, <s>, </s>, <unk> (ids 0-3). Encoding never adds <s> or </s> (same as SmolLM2's tokenizer);
callers that want them add them explicitly. Decoding concatenates tokens, so
decode(encode(text)) == text for any ASCII text.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlft.data.model_config import VLLM_CPU_HEAD_SIZES, TinyModelConfig  # noqa: F401 (re-exported)

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
# The 95 printable ASCII characters (space to "~") and newline; tabs etc. map to <unk>.
CHARACTERS = tuple(chr(c) for c in range(32, 127)) + ("\n",)
def build_tiny_tokenizer(word_tokens: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """The character-level tokenizer (deterministic ids: specials first, then characters, then
    `word_tokens`: strings that are one token each, as reasoning models have "<think>").

    The vocabulary is fixed rather than learned from a corpus, so every machine builds the same
    ids without data.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Added (non-special) tokens are matched before the character split and decode as their text.
    core.add_tokens([AddedToken(word, special=False, normalized=False) for word in word_tokens])
    # Every character (newline included) is its own pre-token, so WordLevel maps it 1:1.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Fuse joins tokens without separators: WordLevel's default decoding inserts spaces.
    core.decoder = decoders.Fuse()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,  # would turn "a ." into "a." on decode
        model_max_length=None,
    )


def tiny_llama_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )


def build_tiny_model(cfg: TinyModelConfig, out_dir: Path) -> Path:
    """Write the tiny model + tokenizer as an HF folder at out_dir (atomically) and return it."""
    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(tuple(cfg.word_tokens))
    config = tiny_llama_config(cfg, tokenizer)
    # Fork the RNG so building a model does not change the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tokenizer.model_max_length = cfg.max_positions
    with atomic_folder(out_dir) as tmp, no_progress_bars():
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' progress bars off inside (a model of a few MB written in a blink draws one on stderr,
    which a one-line error of `rlft train --quiet` must not follow)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


@contextmanager
def atomic_folder(out_dir: Path) -> Iterator[Path]:
    """Yield a temp folder beside out_dir and rename it to out_dir when the block succeeds.

    Readers never see a half-written folder; if another process published out_dir first, its
    copy wins and ours is dropped (both were built from the same inputs).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp", dir=out_dir.parent))
    try:
        yield tmp
        _make_readable(tmp)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """mkdtemp creates 0700 folders: give the cache the permissions of a normal folder."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
