"""InclusiveFL as published (baselines/inclusivefl.py): per-depth heads and top layers kept apart from the plain
average, the momentum distillation on hand-made tensors, the same rules in a tiny BERT run through the simulator,
a killed run resuming exactly, and `fedbt methods` listing it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedbt.cli import main
from fedbt.config import ModelConfig
from fedbt.errors import ConfigError
from fedbt.federated.aggregate import WeightedAverage
from fedbt.federated.method import create_method
from fedbt.federated.simulator import Simulator
from fedbt.federated.tiers import FULL, Tier, deal
from fedbt.models import ModelArch, load_model, meta_model, model_config_for
from fedbt.run import execute, prepare
from tests.conftest import kill_and_resume

BETA = 0.2
TINY = ModelConfig(source="tiny", max_length=32, tiny_layers=4, tiny_hidden=32, tiny_heads=2, tiny_ffn=64)
TIERS = "federation.tiers=[{share: 0.5, local_layers: 2}, {share: 0.25, local_layers: 3}, {share: 0.25}]"
ONE, TWO = Tier("one", 0.25, 1, None, key="federation.tiers[0]"), Tier("two", 0.5, 2, None, key="federation.tiers[1]")


def tiny_arch() -> ModelArch:
    return ModelArch.from_model(meta_model(model_config_for(TINY), "mlm"))


def tiered_run(tiny_config, *extra: str):
    """An inclusivefl run on 4 clients of three tiers (depths 2, 3, 4): the prepared run and each client's tier."""
    prepared = prepare(tiny_config("method.name=inclusivefl", "federation.clients=4", TIERS, *extra))
    execute(prepared)
    return prepared, deal(prepared.method.tiers, 4, prepared.config.seed)


def spy_uploads(monkeypatch) -> list[tuple[int, dict, int]]:
    """Record every (client, decoded upload, examples) the server receives."""
    seen, original = [], Simulator.receive

    def receive(self, task, update):
        payload, row = original(self, task, update)
        seen.append((task.client_id, payload, row.examples))
        return payload, row

    monkeypatch.setattr(Simulator, "receive", receive)
    return seen


def weighted_mean(uploads, name):
    """Hand rule: the n_k-weighted mean of the uploads (payload, n_k) that hold ``name``."""
    held = [(payload[name], n) for payload, n in uploads if name in payload]
    return sum(t * n for t, n in held) / sum(n for _, n in held)


def layer(arch, index: int) -> str:
    return f"{arch.layer_prefix}{index}.output.dense.weight"


def hand_round(method, global_params, uploads):
    """One server round: each (tier, value, n_k) client downloads, uploads every tensor filled with ``value``; the
    plain average as the simulator takes it, then the method's step. Returns the downloads and the new global."""
    average, downloads = WeightedAverage(), []
    for tier, value, n in uploads:
        plan = method.client_plan(0, 0, tier)
        downloads.append(method.download_tensors(plan, tier, global_params))
        upload = {name: torch.full_like(t, value) for name, t in downloads[-1].items()}
        average.add(method.receive_upload(plan, tier, upload, n), n)
    return downloads, {**global_params, **method.aggregate(global_params, average.result())}


def value(tensor: torch.Tensor) -> float:
    assert torch.all(tensor == tensor.flatten()[0]), "hand-made tensors stay constant"
    return tensor.flatten()[0].item()


def test_per_depth_heads_top_layers_and_momentum_distillation_by_hand():
    arch = tiny_arch()  # 4 layers; groups of depth 1, 2 and 4 (the global model)
    method = create_method("inclusivefl", arch, 2, 0, {}, "pretrain", (ONE, TWO, FULL))
    head = arch.head_params()[0]
    start = {n: torch.ones(arch.param_shapes[n]) for n in arch.names}
    emb = arch.embedding_params()[0]

    # round 1: depth-1 client 3.0 (n 2), depth-2 clients 5.0 (n 1) and 9.0 (n 3), full client 2.0 (n 2)
    _, new = hand_round(method, start, [(ONE, 3.0, 2), (TWO, 5.0, 1), (TWO, 9.0, 3), (FULL, 2.0, 2)])
    assert value(new[emb]) == pytest.approx((6 + 5 + 27 + 4) / 8), "embeddings: every client"
    assert value(new[layer(arch, 0)]) == pytest.approx((5 + 27 + 4) / 6), "layer 0: not the depth-1 group's top"
    assert value(new[layer(arch, 1)]) == value(new[head]) == 2.0, "depth-2 top and the head: the full client only"
    own1, own2 = method.own[1], method.own[2]
    assert value(own1[head]) == 3.0 and value(own2[head]) == pytest.approx(8.0), "each head: its own group's mean"
    assert value(own1[layer(arch, 0)]) == pytest.approx(1 + (1 - BETA) * (3 - 1)), "no momentum yet"
    assert value(own2[layer(arch, 1)]) == pytest.approx(1 + (1 - BETA) * (8 - 1))
    # m: the next deeper group's update of the layers from the top up to its own top, averaged over them
    assert value(method.momentum[1][layer(arch, 0)]) == pytest.approx(((8 - 1) + (8 - 1)) / 2)
    assert value(method.momentum[2][layer(arch, 1)]) == pytest.approx(3 * (2 - 1) / 3)

    # round 2: depth-1 client 4.0 (n 2), one depth-2 client 10.0 (n 1), full client 0.0 (n 2)
    downloads, _ = hand_round(method, new, [(ONE, 4.0, 2), (TWO, 10.0, 1), (FULL, 0.0, 2)])
    two = downloads[1]
    assert value(two[layer(arch, 1)]) == pytest.approx(6.6) and value(two[head]) == pytest.approx(8.0)
    assert value(two[layer(arch, 0)]) == pytest.approx(6.0), "below its top: the global layer"
    assert value(method.own[1][layer(arch, 0)]) == pytest.approx(2.6 + (1 - BETA) * (4 - 2.6) + BETA * 7)
    assert value(method.own[2][layer(arch, 1)]) == pytest.approx(6.6 + (1 - BETA) * (10 - 6.6) + BETA * 1)
    assert value(method.own[2][head]) == 10.0, "the depth-1 client's 4.0 never reaches the depth-2 head"
    assert value(method.momentum[1][layer(arch, 0)]) == pytest.approx(((10 - 6.0) + (10 - 6.6)) / 2)
    assert value(method.momentum[2][layer(arch, 1)]) == pytest.approx(-2.0)

    restored = create_method("inclusivefl", arch, 2, 0, {}, "pretrain", (ONE, TWO, FULL))
    restored.load_state_tensors(method.state_tensors())
    assert restored.state_tensors().keys() == method.state_tensors().keys()
    assert all(torch.equal(t, method.state_tensors()[k]) for k, t in restored.state_tensors().items())


def test_options_and_tiers_are_checked():
    with pytest.raises(ConfigError, match="method.options.beta"):
        create_method("inclusivefl", tiny_arch(), 2, 0, {"beta": 1.5}, "pretrain", (ONE, FULL))
    with pytest.raises(ConfigError, match="federation.tiers.*full-depth"):
        create_method("inclusivefl", tiny_arch(), 2, 0, {}, "pretrain", (ONE, TWO))


def test_tiny_bert_run_keeps_each_depths_head_and_top_layer_apart(tiny_config, monkeypatch):
    uploads = spy_uploads(monkeypatch)
    prepared, dealt = tiered_run(tiny_config, "federation.rounds=1")
    method, arch = prepared.method, prepared.method.arch
    depth = {c: len(method.client_plan(0, c, t).layer_map) for c, t in enumerate(dealt)}
    assert sorted(depth.values()) == [2, 2, 3, 4]
    saved = load_file(str(prepared.out_dir / "model/model.safetensors"))
    group = {d: [(p, n) for c, p, n in uploads if depth[c] == d] for d in (2, 3, 4)}
    deeper_than = {d: [(p, n) for c, p, n in uploads if depth[c] > d] for d in (2, 3)}
    head, start = arch.head_params()[0], load_model(TINY, "mlm", 0).state_dict()
    torch.testing.assert_close(saved[head], weighted_mean(group[4], head), msg="global head: full depth only")
    torch.testing.assert_close(method.own[2][head], weighted_mean(group[2], head))
    torch.testing.assert_close(method.own[3][head], weighted_mean(group[3], head))
    for d in (2, 3):  # a shallow top layer: out of the plain average, averaged in its group (no momentum yet)
        top = layer(arch, d - 1)
        torch.testing.assert_close(saved[top], weighted_mean(deeper_than[d], top))
        expected = start[top] + (1 - BETA) * (weighted_mean(group[d], top) - start[top])
        torch.testing.assert_close(method.own[d][top], expected)
    emb = arch.embedding_params()[0]
    torch.testing.assert_close(saved[emb], weighted_mean([(p, n) for _, p, n in uploads], emb))


def test_a_killed_run_resumes_exactly(tiny_config, tmp_path, monkeypatch):
    extra = ["method.name=inclusivefl", "federation.rounds=3", "federation.clients=4", TIERS]
    _, checkpoint = kill_and_resume(tiny_config, tmp_path, monkeypatch, extra)
    state = json.loads((checkpoint / "state.json").read_text())
    saved_state = load_file(str(checkpoint / state["method_tensors"]))
    assert {k.split("/")[0] + "/" + k.split("/")[1] for k in saved_state} >= {"own/2", "own/3", "momentum/2"}


def test_fedbt_methods_lists_it(capsys):
    assert main(["methods", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["inclusivefl"]["scenarios"] == ["pretrain", "finetune"]
    assert "momentum distillation" in rows["inclusivefl"]["description"]
