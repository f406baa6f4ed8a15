"""Client resource tiers: dealing, config errors, FedBT's plans per tier, aggregation over the clients that trained
a tensor, the ledger and metrics per tier with memory budgets, `fedbt costs --tiers`, and no change without tiers."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedbt import cli_costs
from fedbt.config import ModelConfig
from fedbt.errors import ConfigError
from fedbt.federated.aggregate import WeightedAverage
from fedbt.federated.method import create_method
from fedbt.federated.tiers import FULL, Tier, deal, tier_counts
from fedbt.ledger import Ledger
from fedbt.models import ModelArch, meta_model, model_config_for
from fedbt.run import execute, prepare

TIERS = "federation.tiers=[{share: 0.5, local_layers: 2}, {share: 0.25, local_layers: 3}, {share: 0.25, name: strong}]"


def arch(layers: int = 6, head: str = "mlm") -> ModelArch:
    config = model_config_for(ModelConfig(source="tiny", tiny_layers=layers, tiny_hidden=16, tiny_heads=2, tiny_ffn=32))
    return ModelArch.from_model(meta_model(config, head))


def three_tiers(*depths: int) -> tuple[Tier, ...]:
    shares = (0.5, 0.3, 0.2)
    return tuple(
        Tier(f"L{d}", s, d, key=f"federation.tiers[{i}]") for i, (s, d) in enumerate(zip(shares, depths, strict=True))
    )


# ------------------------------------------------------------------------------------------------ dealing


@pytest.mark.parametrize(
    ("shares", "clients", "counts"),
    [((0.5, 0.3, 0.2), 6, [3, 2, 1]), ((0.5, 0.3, 0.2), 10, [5, 3, 2]), ((0.5, 0.3, 0.2), 7, [4, 2, 1])],
)
def test_tier_counts_are_the_shares_rounded_by_largest_remainder(shares, clients, counts):
    # 6 clients: 3, 1.8, 1.2 -> 3, 1, 1, the last client to the largest remainder (0.8); 7: 3.5, 2.1, 1.4 -> tier 0
    assert tier_counts(shares, clients) == counts


def test_dealing_gives_each_tier_its_count_and_repeats_with_the_seed():
    tiers = three_tiers(2, 4, 6)
    dealt = deal(tiers, 10, seed=0)
    assert Counter(t.name for t in dealt) == {"L2": 5, "L4": 3, "L6": 2}
    assert deal(tiers, 10, seed=0) == dealt, "same seed, same tiers"
    assert any(deal(tiers, 10, seed=s) != dealt for s in range(1, 5)), "the seed places the tiers"
    assert deal((FULL,), 3, seed=0) == [FULL] * 3


def test_bad_tiers_fail_before_training_naming_the_key(tiny_config):
    with pytest.raises(ConfigError, match=r"federation.tiers': the shares must sum to 1, got 0.9"):
        tiny_config("federation.tiers=[{share: 0.6}, {share: 0.3}]")
    with pytest.raises(ConfigError, match=r"federation.tiers\[1\].share': required"):
        tiny_config("federation.tiers=[{share: 1.0}, {local_layers: 2}]")
    with pytest.raises(ConfigError, match=r"federation.tiers\[0\].depth': unknown key"):
        tiny_config("federation.tiers=[{share: 1.0, depth: 2}]")
    with pytest.raises(ConfigError, match=r"federation.tiers\[2\].share': a share of 0.1 .* deals no client"):
        tiny_config("federation.tiers=[{share: 0.5}, {share: 0.4}, {share: 0.1}]")  # 3 clients
    with pytest.raises(ConfigError, match=r"federation.tiers\[0\].local_layers': L_k = 9 exceeds .* 4 layers"):
        prepare(tiny_config("federation.tiers=[{share: 1.0, local_layers: 9}]"))
    with pytest.raises(ConfigError, match=r"federation.tiers\[0\].local_layers': the progressive schedule .* L_k = 1"):
        prepare(
            tiny_config("method.name=fedbt", "federation.rounds=4", "federation.tiers=[{share: 1.0, local_layers: 1}]")
        )


# ------------------------------------------------------------------------------------- FedBT per tier


def test_fedbt_pretraining_fills_each_clients_own_depth_by_deep_sampling():
    model_arch = arch(6)
    tiers = three_tiers(3, 4, 6)  # the schedule of 5 rounds reaches layer 2: every L_k > 2
    fedbt = create_method("fedbt", model_arch, 5, 0, {}, "pretrain", tiers)
    for round_idx, layer in enumerate(fedbt.schedule):  # 0, 0, 1, 1, 2
        for tier in tiers:
            plan = fedbt.client_plan(round_idx, 1, tier)
            assert len(plan.layer_map) == tier.local_layers
            assert plan.layer_map[: layer + 1] == tuple(range(layer + 1))
            deep = plan.layer_map[layer + 1 :]
            assert list(deep) == sorted(deep) and all(layer < g < 6 for g in deep)
            assert plan.trainable == frozenset(model_arch.layer_params(layer) + model_arch.head_params())
    assert fedbt.client_plan(3, 0, FULL) == fedbt.plan(3, 0), "without a tier limit: the option's L_k (L_G // 2)"
    assert len(fedbt.plan(3, 0).layer_map) == 3


def test_fedbt_finetuning_cycle_respects_each_clients_depth():
    model_arch = arch(6, "classification")
    tiers = three_tiers(2, 4, 6)
    ft = create_method("fedbt-ft", model_arch, 3, 0, {"cycle": 3}, "finetune", tiers)  # l(i) = 5, 4, 3
    plans = {tier.local_layers: ft.client_plan(2, 0, tier) for tier in tiers}
    assert plans[6].layer_map == (0, 1, 2, 3, 4, 5) and plans[6].trained_layers(model_arch) == [3, 4, 5]
    assert plans[4].layer_map == (0, 3, 4, 5) and plans[4].trained_layers(model_arch) == [3, 4, 5]
    assert plans[2].layer_map == (4, 5), "L_k = 2: the top 2 layers of the block 3..5, no lower layers"
    assert plans[2].trained_layers(model_arch) == [4, 5]
    assert ft.client_plan(0, 0, tiers[0]).trained_layers(model_arch) == [5], "a block that fits is unchanged"


def test_each_trained_tensor_is_averaged_over_the_clients_that_trained_it():
    """Hand-computed: fedbt-ft round 2 above; clients of L_k 2, 4, 6 hold 1, 3, 4 examples and upload all-1, all-2,
    all-3 tensors. Layer 3 is trained by the L_k 4 and 6 clients only: (3*2 + 4*3) / 7 = 18/7; layers 4 and 5 by
    all three: (1*1 + 3*2 + 4*3) / 8 = 19/8; the head too."""
    model_arch = arch(6, "classification")
    tiers = three_tiers(2, 4, 6)
    ft = create_method("fedbt-ft", model_arch, 3, 0, {"cycle": 3}, "finetune", tiers)
    average = WeightedAverage(model_arch.param_shapes)
    for value, (tier, examples) in enumerate(zip(tiers, (1, 3, 4), strict=True), start=1):
        plan = ft.client_plan(2, 0, tier)
        average.add({n: torch.full(model_arch.param_shapes[n], float(value)) for n in plan.trainable}, examples)
    result = average.result()
    assert set(result) == set(ft.client_plan(2, 0, tiers[2]).trainable)
    for name, tensor in result.items():
        expected = 18 / 7 if model_arch.layer_of(name) == 3 else 19 / 8
        torch.testing.assert_close(tensor, torch.full_like(tensor, expected), rtol=0, atol=1e-6)


def test_a_width_slice_is_averaged_per_element_over_the_clients_holding_it():
    """Hand-computed: a (2, 3) tensor; client A (weight 1) uploads it whole (all 1), client B (weight 3) its (1, 2)
    leading block (all 5): the block's elements are (1 + 15) / 4 = 4, the rest 1; an element nobody held keeps the
    global value."""
    average = WeightedAverage({"w": (2, 3), "u": (2, 2)})
    average.add({"w": torch.ones(2, 3)}, 1.0)
    average.add({"w": torch.full((1, 2), 5.0), "u": torch.full((1, 1), 7.0)}, 3.0)
    result = average.result({"w": torch.zeros(2, 3), "u": torch.full((2, 2), -1.0)})
    assert result["w"].tolist() == [[4.0, 4.0, 1.0], [1.0, 1.0, 1.0]]
    assert result["u"].tolist() == [[7.0, -1.0], [-1.0, -1.0]]
    with pytest.raises(ValueError, match="needs the global tensors"):
        average.result()


# ------------------------------------------------------------------------------ runs, ledger, metrics


def test_a_run_with_tiers_records_each_clients_tier_and_the_costs_per_tier(tiny_config):
    budgets = TIERS.replace("local_layers: 2}", "local_layers: 2, memory_mb: 0.5}").replace(
        "strong}", "strong, memory_mb: 1000000}"
    )
    prepared = prepare(tiny_config("method.name=fedbt", "federation.clients=4", "federation.rounds=2", budgets))
    metrics = execute(prepared)
    rows = Ledger(prepared.out_dir / "ledger.csv").rows()
    dealt = deal(prepared.method.tiers, 4, prepared.config.seed)
    assert all(row.tier == dealt[row.client].name for row in rows)
    assert Counter(t.name for t in dealt) == {"tier0": 2, "tier1": 1, "strong": 1}
    depth = {"tier0": 2, "tier1": 3, "strong": 2}  # a tier without local_layers takes the option (L_G // 2 = 2)
    for row in rows:
        plan = prepared.method.client_plan(row.round, row.client, dealt[row.client])
        assert len(plan.layer_map) == depth[row.tier] and row.state_bytes > 0
    tiers = metrics["tiers"]
    assert list(tiers) == ["tier0", "tier1", "strong"] and tiers["tier0"]["clients"] == sorted(
        c for c, t in enumerate(dealt) if t.name == "tier0"
    )
    assert tiers["tier0"]["client_rounds"] == 4 and tiers["strong"]["client_rounds"] == 2
    assert tiers["tier0"]["state_exceeds_budget"] is True, "0.5 MB cannot hold the tiny model's training state"
    assert tiers["strong"]["state_exceeds_budget"] is False and tiers["strong"]["peak_memory_exceeds_budget"] is False
    assert tiers["tier1"]["memory_budget_mb"] is None and tiers["tier1"]["state_exceeds_budget"] is None
    assert tiers["tier1"]["max_state_mb"] > tiers["tier0"]["max_state_mb"], "a deeper local model holds more"
    assert tiers["tier0"]["upload_mb_per_client_round"] == tiers["tier1"]["upload_mb_per_client_round"]


def test_tiers_that_hold_everything_change_nothing(tiny_config, tmp_path):
    """One tier of share 1 without limits is the run without tiers: same losses, same model, same plans."""
    plain = execute(prepare(tiny_config("method.name=fedbt", f"out_dir={tmp_path / 'plain'}")))
    tiered = execute(
        prepare(tiny_config("method.name=fedbt", f"out_dir={tmp_path / 'tiered'}", "federation.tiers=[{share: 1.0}]"))
    )
    assert "tiers" not in plain and set(tiered["tiers"]) == {"tier0"}
    assert [r["train_loss"] for r in plain["rounds"]] == [r["train_loss"] for r in tiered["rounds"]]
    assert plain["plan_sha256"] == tiered["plan_sha256"]
    first, second = (load_file(str(tmp_path / d / "model/model.safetensors")) for d in ("plain", "tiered"))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert {row.tier for row in Ledger(tmp_path / "plain/ledger.csv").rows()} == {""}


# ----------------------------------------------------------------------------------------- fedbt costs


def _costs(capsys, *flags: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="fedbt")
    cli_costs.add_parser(parser.add_subparsers(dest="command"))
    status = cli_costs.main(parser.parse_args(["costs", "--arch", "bert-base-uncased", *flags]))
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_fedbt_costs_prints_a_row_per_tier(capsys):
    tiers = "[{share: 0.5, local_layers: 4, name: weak}, {share: 0.3, local_layers: 8}, {share: 0.2, local_layers: 12}]"
    status, text = _costs(capsys, "--method", "fedbt", "--tiers", tiers)
    assert status == 0
    lines = [line for line in text.splitlines() if line.startswith(("weak ", "tier1 ", "tier2 ", "mix "))]
    assert [line.split()[0] for line in lines] == ["weak", "tier1", "tier2", "mix"]
    status, text = _costs(capsys, "--method", "fedbt", "--tiers", tiers, "--json")
    table = json.loads(text)
    by_name = {t["name"]: t for t in table["tiers"]}
    assert [len(r["local_layers"]) for r in by_name["weak"]["rounds"]] == [4] * 5
    uploads = {t["total"]["upload_bytes"] for t in table["tiers"]}
    assert len(uploads) == 1, "every tier uploads layer l + head"
    flops = [by_name[n]["total"]["analytic_flops"] for n in ("weak", "tier1", "tier2")]
    assert flops == sorted(flops) and flops[0] < flops[-1]
    mix = sum(t["share"] * t["flops_ratio_vs_fedavg"] for t in table["tiers"])
    assert table["tier_mix"]["flops_ratio_vs_fedavg"] == pytest.approx(mix)
    status, text = _costs(capsys, "--method", "fedavg-drop-weak", "--tiers", tiers, "--json")
    ratios = [t["upload_ratio_vs_fedavg"] for t in json.loads(text)["tiers"]]
    assert ratios == [0.0, 0.0, 1.0] and json.loads(text)["tier_mix"]["upload_ratio_vs_fedavg"] == pytest.approx(0.2)
    status, text = _costs(capsys, "--method", "fedbt", "--tiers", "[{share: 0.5}, {share: 0.2}]")
    assert status == 2 and "--tiers': the shares must sum to 1" in text


# -------------------------------------------------------------------------------------------------- report


def _tier(flops: float, upload: float, state: float, budget: float | None) -> dict:
    return {
        "measured_flops_per_client_round": flops,
        "upload_mb_per_client_round": upload,
        "max_state_mb": state,
        "max_peak_memory_mb": 900.0,
        "memory_budget_mb": budget,
        "state_exceeds_budget": None if budget is None else state > budget,
        "peak_memory_exceeds_budget": None if budget is None else budget < 900.0,
    }


def test_a_study_with_tiers_gets_a_per_tier_table_beside_a_main_table_of_at_most_fifteen_columns(tmp_path):
    """The golden runs with tier costs added: the main table keeps method, cost and score columns (<= 15, with the
    dropped share); ``pretrain-tiers`` holds every tier's FLOPs, FLOP % of fedavg's same tier, upload, memory and
    budget flags in Markdown, LaTeX, JSON and HTML, and the study's JSON keeps a ``tiers`` object per row."""
    from fedbt.report.build import build_report
    from fedbt.report.spec import from_dict
    from fedbt.report.tables import MAX_COLUMNS
    from tests.test_report import RUNS, spec_dict

    tiers = {
        "fedavg": {"weak": _tier(8e9, 90.0, 364.0, 121.0), "strong": _tier(8e9, 90.0, 364.0, None)},
        "fedbt": {"weak": _tier(2e9, 1.0, 86.0, 121.0), "strong": _tier(4e9, 1.0, 114.0, None)},
    }
    spec = spec_dict()
    table = spec["tables"][0]
    table["base_tiers"] = [{"share": 0.5, "local_layers": 4}, {"share": 0.5, "local_layers": 12}]
    spec["tables"] = [table]
    for row in table["rows"]:
        paths = []
        for path in row["runs"]["cs"]:
            metrics = json.loads(Path(path).read_text())
            metrics["tiers"] = tiers[row["variant"]]
            copy = tmp_path / "runs" / row["variant"] / Path(path).parent.name / "metrics.json"
            copy.parent.mkdir(parents=True)
            copy.write_text(json.dumps(metrics))
            paths.append(str(copy))
        row["runs"]["cs"] = paths
    assert RUNS.is_dir()
    written = build_report(from_dict(spec), tmp_path / "out")
    out = tmp_path / "out/tables"
    assert {out / f"pretrain-tiers.{ext}" for ext in ("md", "tex", "json", "html")} <= set(written)
    markdown = (out / "pretrain.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| method"))
    assert header.count("|") - 1 <= MAX_COLUMNS and "weak" not in header and "| dropped % |" in header
    assert "cs: held-out MLM loss (ppl) |" in header and "resource tiers on bert-base-uncased" in markdown
    assert "the table pretrain-tiers beside this one" in markdown
    lines = (out / "pretrain-tiers.md").read_text().splitlines()
    assert lines[2] == (
        "| method | tier | FLOPs | FLOP % | upload MB | upload % | state MB | memory estimate MB | peak MB | budget MB "
        "| over budget |"
    )
    assert lines[4:8] == [
        "| fedavg | weak | 8.00 G | 100.0 | 90.00 | 100.0 | 364.0 | – | 900.0 | 121 | state, peak |",
        "| fedavg | strong | 8.00 G | 100.0 | 90.00 | 100.0 | 364.0 | – | 900.0 | – | – |",
        "| fedbt | weak | 2.00 G | 25.0 | 1.00 | 1.1 | 86.0 | – | 900.0 | 121 | peak |",
        "| fedbt | strong | 4.00 G | 50.0 | 1.00 | 1.1 | 114.0 | – | 900.0 | – | – |",
    ]
    assert r"fedbt & weak & 2.00 G & 25.0 &" in (out / "pretrain-tiers.tex").read_text()
    assert "<td>state, peak</td>" in (out / "pretrain-tiers.html").read_text()
    tier_rows = json.loads((out / "pretrain-tiers.json").read_text())["rows"]
    assert [(r["variant"], r["tier"]) for r in tier_rows] == [
        ("fedavg", "weak"),
        ("fedavg", "strong"),
        ("fedbt", "weak"),
        ("fedbt", "strong"),
    ]
    assert tier_rows[2]["flops_pct"] == pytest.approx(25.0) and tier_rows[0]["state_exceeds_budget"] is True
    table_json = json.loads((out / "pretrain.json").read_text())
    rows = table_json["rows"]
    assert rows[1]["tiers"]["weak"]["flops_pct"] == pytest.approx(25.0)
    assert rows[0]["tiers"]["weak"]["state_exceeds_budget"] is True
    assert "memory estimate MB" in table_json["tier_notes"]
    assert {"flops_pct", "upload_pct", "bert_base_upload_pct", "scores"} <= set(rows[1])
    assert rows[1]["bert_base_upload_pct"] == pytest.approx(7.04, abs=0.01), (
        "fedbt uploads layer l + head on every tier"
    )


# ---------------------------------------------------------------------------------------------- fedbt estimate


def test_estimate_plans_each_client_at_its_dealt_tier(tiny_config):
    """`fedbt estimate` deals the tiers as the simulator does: fedavg-drop-weak trains only the strong clients, so
    two studies with the tiers' roles swapped (the same clients dealt, weak <-> strong) sum to plain FedAvg."""
    from fedbt.estimate import job_cost

    def client_flops(*extra: str) -> int:
        config = tiny_config("model.source=minilm", "federation.clients=4", *extra)  # a shipped shape: no weights
        return job_cost("s", "d", "v", 0, config).client_flops

    weak, strong = "{share: 0.5, local_layers: 2}", "{share: 0.5}"
    fedavg = client_flops("method.name=fedavg")
    first = client_flops("method.name=fedavg-drop-weak", f"federation.tiers=[{weak}, {strong}]")
    second = client_flops("method.name=fedavg-drop-weak", f"federation.tiers=[{strong}, {weak}]")
    assert 0 < first < fedavg and 0 < second < fedavg and first + second == fedavg
    assert client_flops("method.name=fedavg", f"federation.tiers=[{weak}, {strong}]") == fedavg, "fedavg: no tiers"
    assert client_flops("method.name=heterofl", f"federation.tiers=[{weak}, {strong}]") < fedavg
