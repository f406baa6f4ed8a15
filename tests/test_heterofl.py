"""HeteroFL as published (Diao et al. 2021, the authors' transformer split): slices of the hidden size, each head's
dimension and the FFN, hand-counted; the local model running at width r H; the Scaler; element-wise averaging with
n_k and count weights; MiniLM's r = 1/3 training state."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from fedbt.federated.aggregate import WeightedAverage, client_weight
from fedbt.federated.method import create_method
from fedbt.federated.tiers import Tier
from fedbt.models import (
    ModelArch,
    add_scalers,
    arch_config,
    meta_model,
    selection_shape,
    slice_parameters,
    width_selections,
    width_size,
)

VIT = "vit:layers=2,hidden=16,heads=2,ffn=32,image=8,patch=4"


def tiny_bert(heads: int = 2, seed: int = 0) -> BertForMaskedLM:
    """4 layers of width 32 (``heads`` heads), FFN 64, vocabulary 50, no dropout (train and eval differ only by
    the Scaler)."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=heads,
        intermediate_size=64,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForMaskedLM(config).eval()


def tier(width: float | None = None, depth: int | None = None) -> Tier:
    return Tier("weak", 1.0, depth, width, key="federation.tiers[0]")


def heterofl_plan(arch: ModelArch, width: float | None = None, depth: int | None = None):
    method = create_method("heterofl", arch, 2, 0, {}, "pretrain", (tier(width, depth),))
    return method.client_plan(0, 0, tier(width, depth))


def sliced(model, width: float):
    """``model`` sliced to width ``width`` with the Scaler, and its selections."""
    selections = width_selections(ModelArch.from_model(model), width)
    slice_parameters(model, selections)
    add_scalers(model, width)
    return model, selections


# ---------------------------------------------------------------------------------------------- slicing


def test_bert_slice_keeps_r_h_each_heads_first_dims_and_r_i_so_a_layer_holds_about_r_squared():
    arch = ModelArch.from_model(tiny_bert())  # H 32, 2 heads of 16, I 64, V 50, 16 positions
    plan = heterofl_plan(arch, width=0.5)
    assert plan.scaler_rate == 0.5
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert plan.slices[q] == ((*range(8), *range(16, 24)), 16), "first 8 dims of each head, first 16 inputs"
    shapes = plan.sub_shapes
    assert shapes["bert.embeddings.word_embeddings.weight"] == (50, 8 * 2)  # vocabulary whole
    assert shapes["bert.embeddings.position_embeddings.weight"] == (16, 16)
    assert shapes["bert.encoder.layer.0.attention.output.dense.weight"] == (16, 16)
    assert shapes["bert.encoder.layer.0.intermediate.dense.weight"] == (32, 16)
    assert shapes["bert.encoder.layer.0.output.dense.weight"] == (16, 32)
    assert shapes["cls.predictions.transform.dense.weight"] == (16, 16)
    assert "cls.predictions.bias" not in shapes, "the vocabulary's output bias stays whole"
    layer = sum(math.prod(shapes.get(n, arch.param_shapes[n])) for n in arch.layer_params(0))
    # Q, K, V 3 (16*16 + 16) + O 16*16 + 16 + FFN 32*16 + 32 + 16*32 + 16 + 2 LayerNorms 2*2*16
    assert layer == 816 + 272 + 544 + 528 + 64 == 2224
    assert arch.numel(arch.layer_params(0)) == 8544 and 0.25 < layer / 8544 < 0.27
    embeddings = sum(math.prod(shapes[n]) for n in arch.embedding_params())
    assert embeddings == 50 * 16 + 16 * 16 + 2 * 16 + 2 * 16
    assert heterofl_plan(arch, depth=2).scaler_rate == 0.5, "r = L_k / L_G without a width"
    full = heterofl_plan(arch)
    assert full.slices == {} and full.scaler_rate == 1.0, "full width: fedavg"


def test_vit_slice_covers_patches_cls_positions_final_norm_and_decoder():
    arch = ModelArch.from_model(meta_model(arch_config(VIT), "mim"))  # H 16, 2 heads of 8, I 32, 4 patches
    shapes = heterofl_plan(arch, width=0.5).sub_shapes
    assert shapes["vit.embeddings.patch_embeddings.projection.weight"] == (8, 3, 4, 4)
    assert shapes["vit.embeddings.cls_token"] == (1, 1, 8) and shapes["vit.embeddings.position_embeddings"] == (1, 5, 8)
    assert shapes["vit.layers.0.attention.q_proj.weight"] == (8, 8) and shapes["vit.layers.0.mlp.fc1.weight"] == (16, 8)
    assert shapes["vit.layernorm.weight"] == (8,) and shapes["decoder.0.weight"] == (48, 8, 1, 1)
    assert "decoder.0.bias" not in shapes, "pixels stay whole"
    selection = width_selections(arch, 0.5)["vit.layers.1.attention.o_proj.weight"]
    assert selection == (8, (0, 1, 2, 3, 8, 9, 10, 11))


def test_width_size_is_ceil_without_float_noise():
    assert width_size(1 / 3, 384) == 128 and width_size(1 / 3, 32) == 11 and width_size(0.01, 64) == 1


# ---------------------------------------------------------------------------------------- the local model


def test_sliced_bert_runs_as_a_narrow_bert_at_width_r_h():
    """At r = 1/2 (head size 8, a consistent split) the sliced model computes exactly what a BERT built at hidden
    size 16 (2 heads, FFN 32) computes with the same weights; the tied decoder follows the word embeddings."""
    model, _ = sliced(tiny_bert(), 0.5)
    config = model.config.to_dict() | {"hidden_size": 16, "intermediate_size": 32}
    narrow = BertForMaskedLM(BertConfig(**config)).eval()
    narrow.load_state_dict(model.state_dict())
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    ids = torch.tensor([[1, 7, 3, 9, 2], [4, 4, 8, 1, 0]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, narrow(input_ids=ids).logits)


@pytest.mark.parametrize("heads", [2, 4])
def test_sliced_bert_trains_forward_and_backward_at_width_r_h(heads):
    """r = 0.3: hidden 10; 4 heads of 8 keep 3 dims each, 12 attention dims (more than the hidden size, as the
    split rule gives); gradients have the slices' shapes."""
    model, selections = sliced(tiny_bert(heads), 0.3)
    model.train()
    loss = model(input_ids=torch.tensor([[1, 7, 3, 9]]), labels=torch.tensor([[1, 7, 3, 9]])).loss
    loss.backward()
    attention = model.bert.encoder.layer[0].attention.self
    assert attention.attention_head_size == (5 if heads == 2 else 3) and attention.num_attention_heads == heads
    params = dict(model.named_parameters())
    assert all(p.grad is not None and p.grad.shape == p.shape for p in params.values())
    assert all(params[n].shape == selection_shape(s) for n, s in selections.items())
    assert model.bert.embeddings.word_embeddings.weight.shape == (50, 10)


def test_sliced_vit_trains_forward_and_backward():
    from fedbt.models import auto_class

    torch.manual_seed(0)
    model, _ = sliced(auto_class("mim").from_config(arch_config(VIT)), 0.5)
    model.train()
    pixels = torch.randn(2, 3, 8, 8)
    loss = model(pixel_values=pixels, bool_masked_pos=torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0]]).bool()).loss
    loss.backward()
    assert torch.isfinite(loss) and model.vit.layers[0].attention.head_dim == 4
    assert all(p.grad is not None for p in model.parameters())


# ------------------------------------------------------------------------------------------------ Scaler


def test_scaler_divides_sliced_sublayer_outputs_by_r_in_training_only():
    model, _ = sliced(tiny_bert(), 0.5)
    ids = torch.tensor([[1, 7, 3, 9]])
    word = model.bert.embeddings.word_embeddings
    dense = model.bert.encoder.layer[0].intermediate.dense
    decoder = model.cls.predictions.decoder
    x, y = torch.randn(1, 4, 16), torch.randn(1, 16)
    with torch.no_grad():
        evaluated = (word(ids), dense(x), decoder(y), model(input_ids=ids).logits)
        model.train()
        trained = (word(ids), dense(x), decoder(y), model(input_ids=ids).logits)
    torch.testing.assert_close(trained[0], evaluated[0] / 0.5)
    torch.testing.assert_close(trained[1], evaluated[1] / 0.5)
    assert torch.equal(trained[2], evaluated[2]), "the vocabulary output is not scaled"
    assert not torch.allclose(trained[3], evaluated[3]), "the scaled branches change the output in training"


def test_scaler_is_identity_at_full_width():
    model, selections = sliced(tiny_bert(), 1.0)
    assert selections == {}
    ids = torch.tensor([[1, 7, 3, 9]])
    with torch.no_grad():
        evaluated = model(input_ids=ids).logits
        trained = model.train()(input_ids=ids).logits
    assert torch.equal(trained, evaluated)


# -------------------------------------------------------------------------------------------- averaging


@pytest.mark.parametrize(
    "scheme, expected",
    [
        # (0,0): (3*1 + 1*5 + 2*2) / 6 = 2; (0,2): (3*1 + 1*9) / 4 = 3; (1,0): (3*1 + 2*4) / 5 = 2.2
        ("weighted", [[2.0, 1.0, 3.0, 1.0], [2.2, 1.0, 1.0, 1.0]]),
        # the authors' count: (1 + 5 + 2) / 3, (1 + 9) / 2, (1 + 4) / 2
        ("uniform", [[8 / 3, 1.0, 5.0, 1.0], [2.5, 1.0, 1.0, 1.0]]),
    ],
)
def test_every_element_is_averaged_over_the_clients_holding_it(scheme, expected):
    average = WeightedAverage({"w": (2, 4)})
    average.add({"w": torch.ones(2, 4)}, client_weight(3, scheme))  # full width
    average.add({"w": torch.tensor([[5.0, 9.0]])}, client_weight(1, scheme), {"w": (1, (0, 2))})  # row 0, cols 0, 2
    average.add({"w": torch.tensor([[2.0], [4.0]])}, client_weight(2, scheme), {"w": (2, 1)})  # column 0
    result = average.result({"w": torch.zeros(2, 4)})
    torch.testing.assert_close(result["w"], torch.tensor(expected))


def test_an_element_no_client_held_keeps_its_global_value():
    average = WeightedAverage({"w": (2, 3)})
    average.add({"w": torch.tensor([[4.0, 6.0]])}, 2.0, {"w": ((1,), (0, 2))})
    result = average.result({"w": torch.full((2, 3), 7.0)})
    torch.testing.assert_close(result["w"], torch.tensor([[7.0, 7.0, 7.0], [4.0, 7.0, 6.0]]))


# ---------------------------------------------------------------------------------------- MiniLM's memory


def test_minilm_one_third_client_trains_in_less_than_half_of_fedavgs_state():
    """Training state = parameters + gradients + AdamW's two moments, 4 bytes each, of the local model built on
    the meta device and sliced as the client's plan says (r = L_k / L_G = 2/6)."""
    config = arch_config("minilm")
    arch = ModelArch.from_model(meta_model(config, "mlm"))
    plan = heterofl_plan(arch, depth=2)
    local = meta_model(config, "mlm")
    slice_parameters(local, plan.slices)
    state = 16 * sum(p.numel() for p in local.parameters())
    full = 16 * sum(arch.param_numel.values())
    assert state == 16 * sum(math.prod(plan.sub_shapes.get(n, arch.param_shapes[n])) for n in arch.names)
    assert state < full / 2 and 83e6 < state < 84e6 and 363e6 < full < 364e6
    assert create_method("heterofl", arch, 2, 0, {}, "pretrain").shrinks == "width"


@pytest.mark.parametrize(
    "head, arch, inputs",
    [
        ("classification", "bert:layers=2,hidden=16,heads=2,ffn=32,vocab=50", {"input_ids": torch.tensor([[1, 2, 3]])}),
        (
            "token_classification",
            "bert:layers=2,hidden=16,heads=2,ffn=32,vocab=50",
            {"input_ids": torch.tensor([[1, 2]])},
        ),
        ("image_classification", VIT, {"pixel_values": torch.randn(1, 3, 8, 8)}),
    ],
)
def test_task_heads_slice_on_their_hidden_side_and_train(head, arch, inputs):
    from fedbt.models import auto_class

    config = arch_config(arch)
    config.num_labels = 3
    torch.manual_seed(0)
    model, selections = sliced(auto_class(head).from_config(config), 0.5)
    assert selections["classifier.weight"] == (3, 8) and "classifier.bias" not in selections, "labels stay whole"
    logits = model.train()(**inputs).logits
    assert logits.shape[-1] == 3
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
