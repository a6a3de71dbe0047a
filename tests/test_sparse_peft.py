"""PaCA, LIFT and HFT: the properties in docs/algorithms.md#peft-methods, on single layers and on the tiny model."""

import random

import pytest
import torch

from rlft.peft import PEFT_METHODS
from rlft.peft.hft import HFTConfig, draw_half
from rlft.peft.lift import LIFTConfig, LiftLinear, carry_over, lift_budget, principal_mask
from rlft.peft.paca import PaCAConfig, PacaLinear
from rlft.sync.payload import SparseUpdate, decode_sparse, encode_sparse
from rlft.sync.shadow import CheckpointShadow

IDS = torch.tensor([[1, 53, 30, 4, 24, 27, 15, 23, 28, 99]])


def tiny_model():
    from transformers import AutoModelForCausalLM

    from rlft.data.model_config import ModelConfig
    from rlft.data.models import resolve_model

    return AutoModelForCausalLM.from_pretrained(resolve_model(ModelConfig(name="tiny")), dtype=torch.float32)


def train_steps(model, peft, steps: int, lr: float = 1e-2, weight_decay: float = 0.0):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        model(IDS, labels=IDS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        peft.after_step(model, optimizer)
    return optimizer


# ------------------------------------------------------------------ PaCA (docs/algorithms.md#paca)
def test_paca_gradient_is_scaled_output_gradient_times_selected_inputs():
    torch.manual_seed(0)
    layer = PacaLinear(torch.nn.Linear(12, 5, bias=True), rank=3, alpha=6.0, generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 7, 12, requires_grad=True)
    g = torch.randn(2, 7, 5)
    (layer(x) * g).sum().backward()
    s, columns = 6.0 / 3, layer.columns
    expected = s * g.reshape(-1, 5).t() @ x.detach().reshape(-1, 12)[:, columns]
    torch.testing.assert_close(layer.paca.grad, expected)
    # the input gradient is the plain linear's with the effective weight
    torch.testing.assert_close(x.grad, (g @ layer.effective_weight().detach()))


def test_paca_changes_only_its_columns_and_equals_its_lora_form():
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    peft = PEFT_METHODS["paca"](PaCAConfig(r=4, alpha=8))
    model = peft.wrap(tiny_model(), seed=0, with_reference=True)
    base_logits = tiny_model()(IDS).logits
    torch.testing.assert_close(model(IDS).logits, base_logits)  # init: the base model exactly
    train_steps(model, peft, 3)
    base = tiny_model().state_dict()
    for name, weight in peft.effective_weights(model).items():
        changed = (weight != base[name]).any(dim=0).nonzero().flatten() if weight.dim() == 2 else None
        if name.endswith("proj.weight"):
            columns = model.get_submodule(name[: -len(".weight")]).columns
            assert set(changed.tolist()) <= set(columns.tolist()) and changed.numel() > 0, name
        else:
            assert torch.equal(weight, base[name]), f"{name} is not a target and must not change"
    # the shipped LoRA (selector A, scaling 1) on the untouched base computes the PaCA model
    lora = get_peft_model(tiny_model(), LoraConfig(r=4, lora_alpha=4, target_modules=list(peft.cfg.target_modules)))
    result = set_peft_model_state_dict(lora, peft.lora_tensors(model))
    assert not result.unexpected_keys
    with torch.no_grad():
        torch.testing.assert_close(lora(IDS).logits, model(IDS).logits, atol=1e-5, rtol=1e-5)
        with peft.reference(model):
            torch.testing.assert_close(model(IDS).logits, base_logits)


# ------------------------------------------------------------------ LIFT (docs/algorithms.md#lift)
def test_lift_budget_is_the_lora_parameter_count():
    assert lift_budget(4096, 4096, 128) == 1_048_576  # 6.25%, the paper's "top 5%" setting
    assert lift_budget(10, 6, 8) == 60  # capped at every entry


def test_lift_mask_is_the_top_k_of_the_low_rank_approximation():
    torch.manual_seed(0)
    weight = torch.randn(24, 16)
    layer = LiftLinear(torch.nn.Linear(16, 24, bias=False), lora_rank=2, filter_rank=3)
    layer.weight.data.copy_(weight)
    index = principal_mask(weight, 3, layer.k)
    assert index.numel() == layer.k == (24 + 16) * 2
    u, s, vh = torch.linalg.svd(weight.double())
    approx = (u[:, :3] * s[:3] @ vh[:3]).abs().reshape(-1)
    threshold = approx.sort(descending=True).values[layer.k - 1]
    assert bool((approx[index] >= threshold).all()) and index.unique().numel() == layer.k
    assert torch.equal(index, index.sort().values)


def test_lift_trains_only_masked_entries_and_carries_moments_over_at_refresh():
    peft = PEFT_METHODS["lift"](LIFTConfig(r=4, lift_update_interval=3))
    model = peft.wrap(tiny_model(), seed=0, with_reference=True)
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.values.numel() == layer.k == (128 + 128) * 4
    start = layer.effective_weight().detach().clone()
    mask = layer.index.clone()
    optimizer = train_steps(model, peft, 2, weight_decay=0.1)  # decay must not touch unmasked entries
    outside = torch.ones(start.numel(), dtype=torch.bool)
    outside[mask] = False
    now = layer.effective_weight().detach().reshape(-1)
    assert torch.equal(now[outside], start.reshape(-1)[outside])
    assert (now[mask] != start.reshape(-1)[mask]).any()
    state = optimizer.state[layer.values]
    model(IDS, labels=IDS).loss.backward()  # the third step refreshes the mask after its update
    optimizer.step()
    after_step_avg = state["exp_avg"].clone()
    optimizer.zero_grad()
    weight_before_refresh = layer.effective_weight().detach().clone()
    assert peft.after_step(model, optimizer) == {"peft/mask_refreshes": 1.0}
    new = layer.index
    assert layer.values.numel() == layer.k and not torch.equal(new, mask) and bool(torch.isin(new, mask).any())
    torch.testing.assert_close(layer.effective_weight(), weight_before_refresh)  # a refresh changes no weight
    for j, position in enumerate(new.tolist()):
        hit = (mask == position).nonzero()
        expected = after_step_avg[hit[0, 0]] if hit.numel() else 0.0
        assert float(state["exp_avg"][j]) == pytest.approx(float(expected))
    assert state["exp_avg_sq"].shape == (layer.k,)  # moments for the trained entries only
    with torch.no_grad(), peft.reference(model):
        torch.testing.assert_close(model(IDS).logits, tiny_model()(IDS).logits)


def test_carry_over_keeps_only_shared_positions():
    old = torch.tensor([1, 4, 7, 9])
    new = torch.tensor([0, 4, 9, 12])
    moment = torch.tensor([10.0, 40.0, 70.0, 90.0])
    assert carry_over(old, new, moment).tolist() == [0.0, 40.0, 90.0, 0.0]


def test_sparse_encoding_round_trips_with_compact_and_wide_positions():
    near = torch.tensor([3, 1, 2000, 30_000, 30_005])  # gaps below 2**15
    far = torch.tensor([0, 70_000])
    tensors = encode_sparse({"a": SparseUpdate(near, torch.arange(5.0), (200, 200)),
                             "b": SparseUpdate(far, torch.tensor([1.0, 2.0]), (80_000,))})
    assert tensors["a@gaps16"].dtype == torch.int16 and tensors["b@index"].dtype == torch.int32
    back = decode_sparse(tensors)
    assert back["a"].index.tolist() == sorted(near.tolist()) and back["a"].values.tolist() == [1.0, 0.0, 2.0, 3.0, 4.0]
    assert back["a"].shape == (200, 200) and back["b"].index.tolist() == [0, 70_000]


def test_generator_side_shadow_reloads_whole_fused_layers(tmp_path):
    """The CPU path: updates go to the kept checkpoint tensors; a touched fused layer is sent whole."""
    from safetensors.torch import save_file

    tensors = {f"m.l0.attn.{p}.weight": torch.zeros(2, 2) for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    tensors["m.l0.norm.weight"] = torch.ones(2)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    shadow = CheckpointShadow(tmp_path, torch.float32, {"qkv_proj": ["q_proj", "k_proj", "v_proj"]})
    touched = shadow.scatter({"m.l0.attn.k_proj.weight": SparseUpdate(torch.tensor([3]), torch.tensor([5.0]), (2, 2))})
    layer = shadow.layer_tensors(touched)
    assert sorted(layer) == [f"m.l0.attn.{p}.weight" for p in ("k_proj", "q_proj", "v_proj")]
    assert layer["m.l0.attn.k_proj.weight"].tolist() == [[0.0, 0.0], [0.0, 5.0]]
    assert sorted(shadow.layer_tensors(shadow.replace({"m.l0.norm.weight": torch.full((2,), 2.0)}))) == ["m.l0.norm.weight"]
    with pytest.raises(ValueError, match="outside its 4 entries"):
        shadow.scatter({"m.l0.attn.o_proj.weight": SparseUpdate(torch.tensor([4]), torch.tensor([1.0]), (2, 2))})


class FusedStandIn(torch.nn.Module):
    """vLLM's layout in miniature: q, k, v stacked in one parameter, filled by checkpoint name."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Parameter(torch.arange(12.0).view(6, 2), requires_grad=False)
        self.o = torch.nn.Parameter(torch.zeros(2, 2), requires_grad=False)

    def load_weights(self, weights):
        for name, tensor in weights:
            if name == "o_proj.weight":
                self.o.data.copy_(tensor)
            else:
                shard = "qkv".index(name[0])
                self.qkv.data[2 * shard: 2 * shard + 2].copy_(tensor)
        return {name for name, _ in weights}


def test_unpacked_engines_take_updates_as_vllm_checkpoint_patches():
    """The GPU path (weights kept as loaded): vLLM's load_checkpoint_weight_patches writes sparse
    entries into the fused parameter and leaves every other entry alone; whole tensors replace."""
    from vllm.model_executor.model_loader.checkpoint_weight_patch import load_checkpoint_weight_patches

    from rlft.sync.vllm_worker import checkpoint_patches, weights_repacked

    model = FusedStandIn()
    assert not weights_repacked(model)
    sparse = decode_sparse(encode_sparse({"k_proj.weight": SparseUpdate(torch.tensor([1, 2]), torch.tensor([-1.0, -2.0]), (2, 2))}))
    load_checkpoint_weight_patches(model, checkpoint_patches(sparse, "sparse", torch.float32))
    expected = torch.arange(12.0).view(6, 2)
    expected[2, 1], expected[3, 0] = -1.0, -2.0
    assert torch.equal(model.qkv, expected)
    load_checkpoint_weight_patches(model, checkpoint_patches({"o_proj.weight": torch.ones(2, 2)}, "partial", torch.float32))
    assert torch.equal(model.o, torch.ones(2, 2)) and torch.equal(model.qkv, expected)
    model.o = torch.nn.Parameter(torch.empty(0), requires_grad=False)  # what the CPU build leaves after repacking
    assert weights_repacked(model)


# ------------------------------------------------------------------ HFT (docs/algorithms.md#hft)
@pytest.mark.parametrize("layers", [24, 7, 2])
def test_hft_draws_half_of_each_category(layers):
    chosen = draw_half(layers, random.Random(layers))
    attention = [len(c & {"q_proj", "k_proj", "v_proj", "o_proj"}) for c in chosen]
    mlp = sum(len(c & {"gate_proj", "up_proj", "down_proj"}) for c in chosen)
    assert attention == [2] * layers
    assert abs(mlp - 1.5 * layers) <= 1 if layers % 2 else mlp == 1.5 * layers
    assert all(len(c & {"input_layernorm", "post_attention_layernorm"}) == 1 for c in chosen)


def test_hft_rounds_draw_different_halves_and_frozen_tensors_stay_bit_identical():
    halves = []
    for round_index in (0, 1):
        peft = PEFT_METHODS["hft"](HFTConfig(hft_round=round_index))
        model = peft.wrap(tiny_model(), seed=0, with_reference=True)
        halves.append(set(peft.trainable))
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        train_steps(model, peft, 2)
        for name, param in model.named_parameters():
            if name in peft.trainable:
                assert not torch.equal(param, start[name]), name
            else:
                assert torch.equal(param, start[name]), f"{name} is frozen this round"
        assert "model.embed_tokens.weight" in peft.trainable
        with torch.no_grad(), peft.reference(model):
            torch.testing.assert_close(model(IDS).logits, tiny_model()(IDS).logits)
    assert halves[0] != halves[1]


@pytest.mark.parametrize("method", ["paca", "lift", "hft"])
def test_checkpoints_load_without_rlft_and_compute_the_trained_model(tmp_path, method):
    """PaCA saves a PEFT LoRA folder that names its base model; LIFT and HFT save full HF folders."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = {"paca": PaCAConfig(r=4, alpha=8), "lift": LIFTConfig(r=4, alpha=8, lift_update_interval=2),
              "hft": HFTConfig()}[method]
    peft = PEFT_METHODS[method](config)
    model = peft.wrap(tiny_model(), seed=0, with_reference=False)
    train_steps(model, peft, 3)
    folder = peft.save(model, None, tmp_path / "ckpt")
    if method == "paca":
        base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), folder)
    else:
        loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        trained = model(IDS).logits
        torch.testing.assert_close(loaded(IDS).logits, trained, atol=1e-5, rtol=1e-5)
        assert (trained - tiny_model()(IDS).logits).abs().max() > 1e-2
