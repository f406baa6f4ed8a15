"""Model loading and layer surgery."""

import pytest
import torch

from fedbt.config import ModelConfig
from fedbt.errors import ConfigError
from fedbt.models import (
    MINILM_SHA256,
    ModelArch,
    arch_config,
    build_local_model,
    extract_to_global,
    get_layer,
    load_from_global,
    load_model,
    local_to_global_names,
    meta_model,
    minilm_path,
    set_layer,
)

TINY = ModelConfig(source="tiny", tiny_layers=4, tiny_hidden=32, tiny_heads=2, tiny_ffn=64, max_length=32)


@pytest.fixture(scope="module")
def tiny_mlm():
    return load_model(TINY, "mlm", seed=0)


def test_minilm_is_shipped_and_verified():
    import hashlib

    path = minilm_path()
    assert hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest() == MINILM_SHA256
    config = arch_config("minilm")
    assert (config.num_hidden_layers, config.hidden_size) == (6, 384)


def test_arch_counts_tied_parameters_once(tiny_mlm):
    arch = ModelArch.from_model(tiny_mlm)
    assert "cls.predictions.decoder.weight" not in arch.names
    assert "bert.embeddings.word_embeddings.weight" in arch.names
    assert arch.numel(arch.names) == sum(p.numel() for p in tiny_mlm.parameters())
    assert arch.num_layers == 4
    assert set(arch.head_params()) == {
        "cls.predictions.bias",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
    }
    assert all(arch.layer_of(n) == 2 for n in arch.layer_params(2))
    with pytest.raises(ConfigError, match="out of range 0..3"):
        arch.layer_params(4)


def test_meta_model_has_the_same_names_as_a_real_one(tiny_mlm):
    from fedbt.models import model_config_for

    meta = meta_model(model_config_for(TINY), "mlm")
    assert ModelArch.from_model(meta).param_numel == ModelArch.from_model(tiny_mlm).param_numel
    assert next(meta.parameters()).device.type == "meta"


def test_local_model_from_sampled_layers(tiny_mlm):
    arch = ModelArch.from_model(tiny_mlm)
    layer_map = (0, 3, 3)
    local = build_local_model(tiny_mlm, depth=3)
    name_map = local_to_global_names(arch, layer_map)
    global_params = dict(tiny_mlm.named_parameters())
    load_from_global(local, global_params, name_map)
    local_params = dict(local.named_parameters())
    for local_name, global_name in name_map.items():
        assert torch.equal(local_params[local_name], global_params[global_name])
    assert name_map["bert.encoder.layer.1.output.dense.weight"] == "bert.encoder.layer.3.output.dense.weight"
    # duplicates of one global layer are averaged when extracted
    with torch.no_grad():
        local_params["bert.encoder.layer.1.output.dense.bias"].fill_(1.0)
        local_params["bert.encoder.layer.2.output.dense.bias"].fill_(3.0)
    extracted = extract_to_global(local, name_map, ["bert.encoder.layer.3.output.dense.bias"])
    assert torch.allclose(extracted["bert.encoder.layer.3.output.dense.bias"], torch.full((32,), 2.0))


def test_surgery_errors(tiny_mlm):
    arch = ModelArch.from_model(tiny_mlm)
    with pytest.raises(ConfigError, match="out of range 0..3"):
        local_to_global_names(arch, (0, 4))
    with pytest.raises(ConfigError, match="must be in 1..4"):
        build_local_model(tiny_mlm, depth=5)
    with pytest.raises(ConfigError, match="out of range"):
        get_layer(tiny_mlm, -1)


def test_get_and_set_layer(tiny_mlm):
    import copy

    model = copy.deepcopy(tiny_mlm)
    replacement = copy.deepcopy(get_layer(model, 3))
    set_layer(model, 0, replacement)
    assert get_layer(model, 0) is replacement


def test_inline_arch_and_errors():
    config = arch_config("bert:layers=8,hidden=512,heads=8,ffn=2048,vocab=30522")
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (8, 512, 2048)
    with pytest.raises(ConfigError, match="allowed keys"):
        arch_config("bert:layers=8,width=3")
    with pytest.raises(ConfigError, match="allowed: bert"):
        arch_config("gpt:layers=2")
