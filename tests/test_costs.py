"""Weight-free cost accounting: analytic FLOPs, cost tables, the paper's communication numbers, the CLI."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from fedbt import cli_costs, paper
from fedbt.costs import analytic_train_flops, compare_paper, cost_table, meta_arch
from fedbt.errors import ConfigError
from fedbt.federated import method as method_module
from fedbt.federated.method import ClientPlan, Method, available_methods, create_method
from fedbt.models import ModelArch, arch_config, meta_model

TINY = "bert:layers=2,hidden=8,heads=2,ffn=16,vocab=10"
BERT_BASE_MLM_PARAMS = 109_514_298


def arch_of(*args) -> ModelArch:
    """The ModelArch of a weight-free (meta device) model."""
    return ModelArch.from_model(meta_arch(*args)[0])


class _Layer0AndHead(Method):
    """FedBT's upload set without its schedule: local layers 0..5, train layer 0 and the MLM head's own
    tensors (the tied decoder weight is the frozen word embedding and not a head parameter)."""

    name = "test-layer0-head"
    description = "throwaway method of the cost tests"
    scenarios = ("pretrain",)

    def plan(self, round_idx: int, client_id: int) -> ClientPlan:
        trainable = set(self.arch.layer_params(0)) | set(self.arch.head_params())
        return ClientPlan(layer_map=tuple(range(6)), trainable=frozenset(trainable))


@pytest.fixture
def layer0_head(monkeypatch):
    """Register the throwaway method (under ``name``) for one test only."""
    available_methods()  # import the built-in methods first, so they register before the monkeypatch

    def install(name: str = _Layer0AndHead.name) -> str:
        monkeypatch.setitem(method_module._REGISTRY, name, _Layer0AndHead)
        return name

    return install


def _plan(arch, layers=None, head=True, layer_map=None) -> ClientPlan:
    names = {n for i in (layers or []) for n in arch.layer_params(i)}
    if head:
        names |= set(arch.head_params())
    return ClientPlan(tuple(layer_map or range(arch.num_layers)), frozenset(names))


# ------------------------------------------------------------------------------------ analytic FLOPs


@pytest.mark.parametrize("head", ["mlm", "classification"])
def test_full_training_costs_three_forward_passes(head):
    arch = arch_of("bert-base-uncased", head)
    full = ClientPlan(tuple(range(arch.num_layers)), frozenset(arch.names))
    frozen = ClientPlan(full.layer_map, frozenset())  # forward only
    args = {"sequences": 4, "seq_len": 128, "predicted_tokens": 77, "head": head}
    assert analytic_train_flops(arch, full, **args) == 3 * analytic_train_flops(arch, frozen, **args)


def test_freezing_lower_layers_strictly_reduces_flops():
    arch = arch_of("bert-base-uncased", "mlm")
    args = {"sequences": 8, "seq_len": 128, "predicted_tokens": 154}
    full = analytic_train_flops(arch, ClientPlan(tuple(range(12)), frozenset(arch.names)), **args)
    costs = [analytic_train_flops(arch, _plan(arch, range(low, 12)), **args) for low in range(12)]
    assert full > costs[0]
    assert all(a > b for a, b in zip(costs, costs[1:], strict=False))
    head_only = analytic_train_flops(arch, _plan(arch), **args)
    assert costs[-1] > head_only


def test_analytic_flops_hand_computed():
    arch = arch_of(TINY, "mlm")
    plan = ClientPlan((0, 1), frozenset(arch.layer_params(1)) | {"cls.predictions.transform.dense.weight"})
    H, F, V, S, sequences, P = 8, 16, 10, 4, 3, 5  # F: FFN width
    T = sequences * S  # 12 tokens
    W = 2 * (4 * H * H + 2 * H * F)  # 1024: weight matmuls per token and layer
    A = 4 * S * H  # 128: Q K^T and P V per token
    qkv = 6 * H * H  # 384: Q/K/V input gradients, not needed below the lowest trainable layer
    forward = 2 * T * (W + A) + P * 2 * H * H + P * 2 * H * V  # 27648 + 640 + 800
    backward = (
        T * W  # layer 1 weight gradients (layer 0 is frozen and below: nothing)
        + T * (W + 2 * A - qkv)  # layer 1 activation gradients
        + 2 * P * 2 * H * H  # transform: weight and input gradients
        + P * 2 * H * V  # decoder (tied, frozen): input gradient only
    )
    assert forward + backward == 54208
    assert analytic_train_flops(arch, plan, sequences, S, P) == 54208


def test_analytic_flops_equal_flop_counter_of_a_real_training_step():
    """Eager attention, so that FlopCounterMode sees Q K^T and P V (it misses the CPU SDPA kernel)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=24,
        num_labels=3,
        attn_implementation="eager",
    )
    for head, cls in (("mlm", BertForMaskedLM), ("classification", BertForSequenceClassification)):
        model = cls(config).eval()
        arch = arch_of("bert:layers=3,hidden=16,heads=2,ffn=24,vocab=50", head, 3)
        for plan in (
            ClientPlan((0, 1, 2), frozenset(arch.names)),
            _plan(arch, [0]),
            _plan(arch, [1], head=False),
            _plan(arch, [], head=True),
        ):
            for name, param in model.named_parameters():
                param.requires_grad_(name in plan.trainable)
            with FlopCounterMode(display=False) as counter:
                model(input_ids=torch.randint(0, 50, (2, 7))).logits.sum().backward()
            expected = analytic_train_flops(arch, plan, sequences=2, seq_len=7, predicted_tokens=14, head=head)
            assert counter.get_total_flops() == expected, (head, sorted(plan.trained_layers(arch)))


def _lora_arch(arch_name: str, head: str = "mlm", **options) -> ModelArch:
    model = meta_arch(arch_name, head)[0]
    return create_method("lora", model, 1, 0, options, "pretrain").arch


def test_lora_charges_frozen_weights_input_gradients_and_adapters_their_own_passes():
    arch = _lora_arch(TINY, rank=2)
    adapters = frozenset(n for n in arch.names if ".lora_" in n)
    plan = ClientPlan((0, 1), adapters | set(arch.head_params()))
    H, F, V, S, sequences, P, r = 8, 16, 10, 4, 3, 5, 2
    T = sequences * S
    W = 2 * (4 * H * H + 2 * H * F)  # 1024: the frozen base matmuls per token and layer
    lora = 2 * (2 * r * H + 2 * H * r)  # 128: A and B of query and value
    qk = pv = 2 * S * H  # 64 each
    forward = 2 * T * (W + lora + qk + pv) + P * 2 * H * H + P * 2 * H * V  # 30720 + 640 + 800
    # layer 0: nothing trains below it, so its base weights need no gradient at all; each adapter A its weight
    # gradient, each B its weight and input gradient; attention the gradients of Q, V and P (not K); the
    # attention output and the FFN their input gradients only
    layer0 = 2 * (2 * r * H + 2 * 2 * H * r) + (pv + pv + qk) + 2 * H * H + 2 * 2 * H * F
    # layer 1: every input needs a gradient: the base weights their input gradients (2x forward), adapters both
    layer1 = W + 2 * lora + 2 * (qk + pv)
    head = 2 * P * 2 * H * H + P * 2 * H * V  # transform trains; the tied decoder: input gradient only
    backward = T * (layer0 + layer1) + head
    assert (layer0, layer1, forward + backward) == (1024, 1536, 64960)
    assert analytic_train_flops(arch, plan, sequences, S, P) == 64960
    # the model before issue 20 charged every adapted layer its dense weight gradients too (W per token and layer)
    assert analytic_train_flops(arch, ClientPlan((0, 1), frozenset()), sequences, S, P) == forward


def test_a_frozen_weight_above_a_trained_one_costs_twice_its_forward():
    arch = arch_of(TINY, "mlm")
    H, F, V, S, sequences, P = 8, 16, 10, 4, 3, 5
    T = sequences * S
    W, A = 2 * (4 * H * H + 2 * H * F), 4 * S * H  # 1024, 128
    heads = P * 2 * H * H + P * 2 * H * V  # 1440
    plan = ClientPlan((0, 1), frozenset(arch.layer_params(0)))  # layer 1 and the head frozen above layer 0
    forward = 2 * T * (W + A) + heads
    backward = (
        T * (W + W - 6 * H * H + 2 * A)  # layer 0: weight gradients, input gradients but Q/K/V's (nothing below)
        + T * (W + 2 * A)  # frozen layer 1: input gradients only, as much again as its forward
        + heads  # frozen head: input gradients only
    )
    assert (forward, backward) == (29088, 23040 + 15360 + 1440)
    assert analytic_train_flops(arch, plan, sequences, S, P) == forward + backward


def test_lora_analytic_flops_equal_flop_counter_of_a_real_training_step():
    """LoRA adapters (peft) on eager BERT: adapters, frozen base weights and partial plans counted exactly."""
    from peft import LoraConfig, inject_adapter_in_model
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=24,
        attn_implementation="eager",
    )
    for targets in (["query", "value"], ["key", "output.dense"], ["intermediate.dense"]):
        model = inject_adapter_in_model(LoraConfig(r=4, target_modules=targets), BertForMaskedLM(config)).eval()
        arch = ModelArch.from_model(model)
        adapters = {n for n in arch.names if ".lora_" in n}
        for trainable in (
            adapters | set(arch.head_params()),
            {n for n in adapters if arch.layer_of(n) == 1},
            {n for n in adapters if ".lora_A." in n},
            {n for n in arch.names if n.endswith("bias") and arch.layer_of(n) == 1},
        ):
            for name, param in model.named_parameters():
                param.requires_grad_(name in trainable)
            with FlopCounterMode(display=False) as counter:
                model(input_ids=torch.randint(0, 50, (2, 7))).logits.sum().backward()
            plan = ClientPlan((0, 1, 2), frozenset(trainable))
            assert counter.get_total_flops() == analytic_train_flops(arch, plan, 2, 7, 14), targets


def test_lora_minilm_flops_ratio_is_the_measured_one():
    """Issue 20: measured LoRA FLOPs were 66.5 % of FedAvg's on MiniLM at 32 tokens (the old model said 94.5 %)."""
    table = cost_table("minilm", "lora", 3, {}, seq_len=32)
    assert table["flops_ratio_vs_fedavg"] == pytest.approx(0.665, abs=0.001)


# -------------------------------------------------------------------------------------- cost tables

ROUND_KEYS = {
    "round",
    "trained_layers",
    "local_layers",
    "upload_params",
    "upload_bytes",
    "upload_mib",
    "upload_mb",
    "download_params",
    "download_bytes",
    "download_mib",
    "download_mb",
    "analytic_flops",
}


def test_fedavg_bert_base_table():
    table = cost_table("bert-base-uncased", "fedavg", 3, {})
    assert table["head"] == "mlm"
    assert set(table) == {
        "arch",
        "head",
        "method",
        "options",
        "rounds",
        "total",
        "upload_ratio_vs_fedavg",
        "download_ratio_vs_fedavg",
        "flops_ratio_vs_fedavg",
    }
    assert table["arch"] == {
        "name": "bert-base-uncased",
        "layers": 12,
        "hidden": 768,
        "heads": 12,
        "ffn": 3072,
        "vocab": 30522,
        "params": BERT_BASE_MLM_PARAMS,
    }
    assert len(table["rounds"]) == 3
    row = table["rounds"][0]
    assert set(row) == ROUND_KEYS
    assert row["trained_layers"] == row["local_layers"] == list(range(12))
    assert row["upload_params"] == row["download_params"] == BERT_BASE_MLM_PARAMS
    assert row["upload_bytes"] == 4 * BERT_BASE_MLM_PARAMS
    assert row["upload_mib"] == pytest.approx(4 * BERT_BASE_MLM_PARAMS / 2**20)
    assert row["upload_mb"] == pytest.approx(4 * BERT_BASE_MLM_PARAMS / 1e6)
    assert set(table["total"]) == ROUND_KEYS - {"round", "trained_layers", "local_layers"}
    assert table["total"]["upload_params"] == 3 * BERT_BASE_MLM_PARAMS
    assert table["total"]["analytic_flops"] == 3 * row["analytic_flops"]
    assert table["upload_ratio_vs_fedavg"] == table["download_ratio_vs_fedavg"] == 1.0
    assert table["flops_ratio_vs_fedavg"] == 1.0
    json.dumps(table)


def test_tied_decoder_counted_once():
    model = meta_model(arch_config("bert-base-uncased"), "mlm")
    unique = sum(p.numel() for p in model.parameters())
    every_name = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert unique == BERT_BASE_MLM_PARAMS
    assert every_name - unique >= 30522 * 768  # the decoder weight is the word embedding
    assert cost_table("bert-base-uncased", "fedavg", 1, {})["rounds"][0]["upload_params"] == unique


def test_fedavg_flops_per_round_bert_base():
    H, F, S, V, L = 768, 3072, 128, 30522, 12
    tokens, masked = 256 * S, round(0.15 * 256 * S)
    forward = L * tokens * (2 * (4 * H * H + 2 * H * F) + 4 * S * H) + masked * (2 * H * H + 2 * H * V)
    row = cost_table("bert-base-uncased", "fedavg", 1, {})["rounds"][0]
    assert row["analytic_flops"] == 3 * forward == 17_871_355_247_616
    full_logits = cost_table("bert-base-uncased", "fedavg", 1, {}, masked_only=False)["rounds"][0]
    assert full_logits["analytic_flops"] - row["analytic_flops"] == 3 * (tokens - masked) * (2 * H * H + 2 * H * V)


def test_classification_head_takes_num_labels_from_the_classifier():
    two = cost_table("bert-base-uncased", "fedavg", 1, {}, head="classification", num_labels=2)
    five = cost_table("bert-base-uncased", "fedavg", 1, {}, head="classification", num_labels=5)
    assert five["arch"]["params"] - two["arch"]["params"] == 3 * 768 + 3
    flops = five["rounds"][0]["analytic_flops"] - two["rounds"][0]["analytic_flops"]
    assert flops == 3 * 256 * 2 * 768 * 3


def test_paper_fedbt_upload_percent(layer0_head):
    """FedBT uploads layer 0 + the MLM head transform and bias: 7.04 % of BERT-FL, 29.42 MiB (Table 1)."""
    table = cost_table("bert-base-uncased", layer0_head(), 5, {})
    row = table["rounds"][0]
    assert row["upload_params"] == 7_087_872 + 592_128 + 30_522
    assert 100 * table["upload_ratio_vs_fedavg"] == pytest.approx(7.04, abs=0.05)
    assert row["upload_mib"] == pytest.approx(29.42, abs=0.05)
    assert row["local_layers"] == [0, 1, 2, 3, 4, 5] and row["trained_layers"] == [0]
    assert table["flops_ratio_vs_fedavg"] < 0.5


def test_compare_paper_pretraining_rows(layer0_head):
    layer0_head("fedbt")  # stands in for the real FedBT method (same upload set)
    rows = {row["label"]: row for row in compare_paper("pretrain")}
    assert "distilbert" not in rows  # no BERT-shaped config for DistilBERT
    for label in ("fedavg", "tinybert-6", "tinybert-4", "fedbt"):
        assert rows[label]["ours_percent"] == pytest.approx(paper.COMM["pretrain", label].percent, abs=0.05)


def test_compare_paper_skips_unregistered_methods(monkeypatch):
    available_methods()
    monkeypatch.setattr(method_module, "_REGISTRY", {"fedavg": method_module._REGISTRY["fedavg"]})
    assert {row["label"] for row in compare_paper("finetune")} == {"fedavg", "tinybert-6", "tinybert-4"}


def test_inline_arch():
    table = cost_table(TINY, "fedavg", 2, {})
    assert table["arch"] | {"params": 0} == {
        "name": TINY,
        "layers": 2,
        "hidden": 8,
        "heads": 2,
        "ffn": 16,
        "vocab": 10,
        "params": 0,
    }
    with pytest.raises(ConfigError, match="bad item 'hiden=8'; allowed keys: layers, hidden"):
        cost_table("bert:layers=2,hiden=8", "fedavg", 1, {})
    with pytest.raises(ConfigError, match="not a multiple of the number of attention heads"):
        cost_table("bert:layers=2,hidden=10,heads=3", "fedavg", 1, {})


def test_unknown_method_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown method 'nope'; known methods: .*fedavg"):
        cost_table(TINY, "nope", 1, {})


# ----------------------------------------------------------------------------------------------- CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedbt")
    cli_costs.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["costs", *argv])


@pytest.mark.parametrize(
    "arch", ["bert-base-uncased", "bert:layers=8,hidden=512,heads=8,ffn=2048,vocab=30522", "minilm"]
)
def test_cli_json(arch, capsys):
    assert cli_costs.main(_parse(["--arch", arch, "--method", "fedavg", "--rounds", "2", "--json"])) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["method"] == "fedavg" and len(table["rounds"]) == 2
    assert table["total"]["upload_params"] == 2 * table["arch"]["params"]


def test_cli_text_and_task_head(capsys):
    args = _parse(["--arch", TINY, "--method", "fedavg", "--rounds", "2", "--task-head", "classification"])
    assert args.head == "classification"
    assert cli_costs.main(args) == 0
    out = capsys.readouterr().out
    assert "fedavg on bert:layers=2" in out and "total" in out and "upload 100.00%" in out


def test_cli_errors_exit_2_with_one_line(capsys):
    assert cli_costs.main(_parse(["--arch", TINY, "--method", "nope", "--rounds", "1"])) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "known methods: " in captured.err and "fedavg" in captured.err
    assert cli_costs.main(_parse(["--arch", "bert:layers=x", "--method", "fedavg", "--rounds", "1"])) == 2
    assert "bad item" in capsys.readouterr().err
    # fedavg has no options: the flag reaches the method's option validation
    assert cli_costs.main(_parse(["--arch", TINY, "--method", "fedavg", "--rounds", "1", "--local-layers", "1"])) == 2
    assert "method.options.local_layers" in capsys.readouterr().err


def test_parse_options():
    assert cli_costs.parse_options(["a=3", "b=[0, 1]", "c=true", "d=x"], local_layers=6) == {
        "a": 3,
        "b": [0, 1],
        "c": True,
        "d": "x",
        "local_layers": 6,
    }
    with pytest.raises(ConfigError, match="key=value"):
        cli_costs.parse_options(["novalue"])


def test_cli_subprocess_json_offline():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedbt.cli",
            "costs",
            "--arch",
            TINY,
            "--method",
            "fedavg",
            "--rounds",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["upload_ratio_vs_fedavg"] == 1.0


def test_paper_constants_live_in_one_module_that_costs_and_report_share():
    from fedbt import costs as costs_module
    from fedbt.report import costs as report_costs

    assert costs_module.paper is paper and report_costs.paper is paper
    for module in (costs_module, report_costs):
        assert not [name for name in vars(module) if name.startswith("PAPER_")], module.__name__
    assert paper.HEAD == {"pretrain": "mlm", "finetune": "token_classification"}
    assert paper.ROUNDS == {"pretrain": 5, "finetune": 10}


def test_compare_paper_and_report_agree_on_the_fine_tuning_upload():
    from fedbt.report.costs import upload_pct

    ours = {row["label"]: row["ours_percent"] for row in compare_paper("finetune")}
    assert ours["fedbt-ft"] == pytest.approx(upload_pct({"method": "fedbt-ft", "options": {}}, "finetune"))
    assert ours["fedbt-ft"] == pytest.approx(paper.COMM["finetune", "fedbt-ft"].percent, abs=0.05)


def test_cli_a_fine_tuning_only_method_implies_its_scenario(capsys):
    args = _parse(["--arch", "bert-base-uncased", "--method", "fedbt-ft", "--compare-paper", "--json"])
    assert cli_costs.main(args) == 0, capsys.readouterr().err
    table = json.loads(capsys.readouterr().out)
    assert table["head"] == "token_classification" and len(table["rounds"]) == paper.ROUNDS["finetune"]
    assert {row["label"] for row in table["paper"]} >= {"fedbt-ft", "fedavg"}
