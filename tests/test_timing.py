"""Simulated time on real devices: the time model on hand-computed cases, deadlines, availability by seed, strict
device configs, a run whose late client provably never enters the average, and the estimate's simulated hours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedbt.errors import ConfigError
from fedbt.federated.devices import Device, available, client_device, presets, resolve
from fedbt.ledger import MISSED_DEADLINE, TRAINED, UNAVAILABLE, Ledger
from fedbt.run import execute, prepare
from fedbt.timing import ClientTime, client_time, is_late, percentile_deadline, round_deadline, round_span
from tests.conftest import REPO
from tests.test_report import RUNS

DATA = REPO / "data"
# 80 Mbit/s = 10 MB/s down and 8 Mbit/s = 1 MB/s up at 10 GFLOP/s; the slow device a tenth of each
FAST = Device("fast", train_gflops=10.0, downlink_mbps=80.0, uplink_mbps=8.0)
SLOW = Device("slow", train_gflops=1.0, downlink_mbps=8.0, uplink_mbps=0.8)
MB = 10**6


# ------------------------------------------------------------------------------------ the time model


def test_one_fast_and_one_slow_client_by_hand():
    """10 MB down, 20 GFLOPs, 2 MB up: 1 + 2 + 2 = 5 s on the fast device, 10 + 20 + 20 = 50 s on the slow one; a
    synchronous round lasts as long as the slow one."""
    fast, slow = (client_time(d, 10 * MB, 20e9, 2 * MB) for d in (FAST, SLOW))
    assert fast == pytest.approx(ClientTime(1.0, 2.0, 2.0)) and fast.total == pytest.approx(5.0)
    assert slow == pytest.approx(ClientTime(10.0, 20.0, 20.0)) and slow.total == pytest.approx(50.0)
    assert round_span([fast.total, slow.total], None) == pytest.approx(50.0)
    assert round_span([], None) == 0.0


def test_a_deadline_drops_exactly_the_slow_client():
    """A 30 s deadline: the fast client (5 s) makes it, the slow one (50 s) does not, and the round lasts 30 s. The
    slow client downloads for 10 s, then computes for 20 s: by 20 s it has done half of it, by 30 s all."""
    times = {"fast": 5.0, "slow": 50.0}
    deadline = round_deadline(list(times.values()), seconds=30.0)
    assert [name for name, t in times.items() if is_late(t, deadline)] == ["slow"]
    assert round_span(times.values(), deadline) == 30.0
    slow = ClientTime(10.0, 20.0, 20.0)
    assert slow.compute_done(20.0) == pytest.approx(0.5) and slow.compute_done(30.0) == 1.0
    assert slow.compute_done(5.0) == 0.0, "still downloading"
    assert not is_late(30.0, 30.0), "finishing at the deadline is in time"


def test_a_percentile_deadline_closes_the_round_when_that_share_has_reported():
    """Nearest rank: of 5 clients, p = 80 closes at the 4th (ceil(4.0)), p = 50 at the 3rd (ceil(2.5)), p = 100 at
    the slowest, so only clients after that rank are late."""
    times = [12.0, 3.0, 50.0, 7.0, 20.0]
    assert percentile_deadline(times, 80) == 20.0
    assert percentile_deadline(times, 50) == 12.0
    assert percentile_deadline(times, 100) == 50.0 and percentile_deadline([], 50) is None
    assert [t for t in times if is_late(t, round_deadline(times, percentile=80))] == [50.0]


def test_availability_is_dealt_by_seed_and_identical_on_rerun():
    device = Device("half", 1.0, 1.0, 1.0, availability=0.5)
    draws = [[available(device, 7, r, c) for c in range(20)] for r in range(20)]
    assert draws == [[available(device, 7, r, c) for c in range(20)] for r in range(20)], "same seed, same draws"
    assert draws != [[available(device, 8, r, c) for c in range(20)] for r in range(20)], "another seed"
    assert 0.35 < sum(map(sum, draws)) / 400 < 0.65
    assert all(available(FAST, 7, r, c) for r in range(5) for c in range(5)), "availability 1: always"


def test_spread_deals_each_client_its_own_device_by_seed():
    """A log-normal factor per client and quantity (median 1), fixed for the run: the same seed deals the same
    devices, quantities without a sigma stay."""
    tier = Device("spread", 10.0, 80.0, 8.0, spread=(("train_gflops", 0.6),))
    first = [client_device(tier, 3, client) for client in range(6)]
    assert first == [client_device(tier, 3, client) for client in range(6)]
    assert len({d.train_gflops for d in first}) == 6 and all(d.uplink_mbps == 8.0 for d in first)
    assert first != [client_device(tier, 4, client) for client in range(6)]


# ------------------------------------------------------------------------------------ strict configs


def test_presets_are_shipped_with_their_sources():
    names = presets(DATA)
    assert {"phone-low", "phone-mid", "phone-high", "rpi4"} <= set(names)
    for name in names:
        assert (DATA / "devices" / name / "SOURCE.md").is_file()
        device = resolve(name, "device", DATA)
        assert device.train_gflops > 0 and device.uplink_mbps <= device.downlink_mbps
    changed = resolve({"preset": "phone-mid", "availability": 0.5}, "device", DATA)
    assert changed.availability == 0.5 and changed.train_gflops == resolve("phone-mid", "device", DATA).train_gflops


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("phone-xl", r"federation.tiers\[0\].device': unknown device preset 'phone-xl'; allowed: .*phone-low"),
        ("{preset: phone-mid, uplnk_mbps: 3}", r"device.uplnk_mbps': unknown key; allowed keys here: .*uplink_mbps"),
        ("{train_gflops: 5, downlink_mbps: 10}", r"device.uplink_mbps': required"),
        ("{preset: phone-mid, availability: 1.5}", r"device.availability': got 1.5, must be in \(0, 1\]"),
        ("{preset: phone-mid, spread: {memory_mb: 0.5}}", r"spread.memory_mb': unknown key; allowed keys here"),
    ],
)
def test_a_bad_device_fails_before_training_naming_the_key(tiny_config, device, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(f"federation.tiers=[{{share: 0.34, device: {device}}}, {{share: 0.66, device: phone-high}}]")


def test_deadline_settings_are_checked(tiny_config):
    tiers = "federation.tiers=[{share: 0.34, device: phone-low}, {share: 0.66, device: phone-high}]"
    with pytest.raises(ConfigError, match=r"federation.deadline_percentile': a percentile .* needs devices"):
        tiny_config("federation.deadline_percentile=80")
    with pytest.raises(ConfigError, match=r"federation.deadline_percentile': set federation.deadline_s or this"):
        tiny_config(tiers, "federation.deadline_s=60", "federation.deadline_percentile=80")
    with pytest.raises(ConfigError, match=r"federation.tiers\[1\].device': required: another tier has a device"):
        tiny_config("federation.tiers=[{share: 0.34, device: phone-low}, {share: 0.66}]")
    with pytest.raises(ConfigError, match=r"device.train_gflops_bf16': required: local.precision is bf16"):
        tiny_config(tiers, "local.precision=bf16")
    with pytest.raises(ConfigError, match=r"federation.deadline_s': must be > 0"):
        tiny_config(tiers, "federation.deadline_s=0")


# ------------------------------------------------------------------------------------ runs

SLOW_DEVICE = "{train_gflops: 0.01, downlink_mbps: 50, uplink_mbps: 50}"
WEAK_SLOW = f"{{name: weak, share: 0.34, local_layers: 2, device: {SLOW_DEVICE}}}"
STRONG_FAST = "{name: strong, share: 0.66, device: {train_gflops: 1000, downlink_mbps: 1000, uplink_mbps: 1000}}"


def test_a_late_client_never_enters_the_average(tiny_config, tmp_path):
    """The weak client's device computes at 10 MFLOP/s, so its round takes minutes, the strong ones' well under a
    second: a 10 s deadline drops exactly the weak client in every round (status missed-deadline, its download
    counted, no upload, the FLOPs it did until the deadline), and the final model is bit for bit that of
    fedavg-drop-weak, in which the weak client never trains."""
    config = tiny_config(
        f"out_dir={tmp_path / 'late'}",
        "method.name=fedavg",
        f"federation.tiers=[{WEAK_SLOW}, {STRONG_FAST}]",
        "federation.deadline_s=10",
    )
    metrics = execute(prepare(config))
    rows = Ledger(tmp_path / "late/ledger.csv").rows()
    weak, strong = [r for r in rows if r.tier == "weak"], [r for r in rows if r.tier == "strong"]
    assert [r.status for r in weak] == [MISSED_DEADLINE] * 3 and all(r.status == TRAINED for r in strong)
    for row in weak:
        assert row.upload_bytes == 0 and row.download_bytes == strong[0].download_bytes and row.steps == 0
        assert row.sim_seconds > 10 and 0 < row.measured_flops < strong[0].measured_flops
        # it computes from the end of its download until the deadline, at 10 MFLOP/s
        download = row.download_bytes / (50 * 10**6 / 8)
        assert row.measured_flops == pytest.approx((10 - download) * 1e7, rel=1e-6)
    assert all(0 < r.sim_seconds < 1 for r in strong)
    for record in metrics["rounds"]:
        assert record["deadline_missed"] == 1 and record["sim_deadline_s"] == 10
        assert record["sim_round_seconds"] == pytest.approx(10 + record["sim_server_seconds"])
    timing = metrics["timing"]
    assert timing["deadline_miss_pct"] == pytest.approx(100 / 3) and timing["wasted_flops"] > 0
    assert metrics["tiers"]["weak"]["deadline_miss_pct"] == 100.0 and metrics["final"]["timing.sim_seconds"] > 30
    reference = tiny_config(
        f"out_dir={tmp_path / 'reference'}",
        "method.name=fedavg-drop-weak",
        "federation.tiers=[{name: weak, share: 0.34, local_layers: 2}, {name: strong, share: 0.66}]",
    )
    execute(prepare(reference))
    late, dropped = (load_file(str(tmp_path / d / "model/model.safetensors")) for d in ("late", "reference"))
    assert all(torch.equal(late[k], dropped[k]) for k in dropped)


def test_an_unavailable_client_sits_the_round_out_as_its_draws_say(tiny_config, tmp_path):
    weak = "{name: weak, share: 0.34, device: {preset: phone-mid, availability: 0.5}}"
    prepared = prepare(tiny_config(f"federation.tiers=[{weak}, {{name: strong, share: 0.66, device: phone-high}}]"))
    metrics = execute(prepared)
    rows = Ledger(prepared.out_dir / "ledger.csv").rows()
    device = resolve({"preset": "phone-mid", "availability": 0.5}, "device", DATA)
    for row in (r for r in rows if r.tier == "weak"):
        assert (row.status == UNAVAILABLE) == (not available(device, 0, row.round, row.client))
        if row.status == UNAVAILABLE:
            assert row.download_bytes == row.upload_bytes == row.measured_flops == 0 and row.sim_seconds == 0
    assert [r["unavailable"] for r in metrics["rounds"]] == [
        sum(r.status == UNAVAILABLE for r in rows if r.round == i) for i in range(3)
    ]


def test_a_pooled_method_and_a_run_without_devices_are_not_timed(tiny_config, tmp_path):
    tiers = "federation.tiers=[{share: 0.34, device: phone-low}, {share: 0.66, device: phone-high}]"
    pooled = execute(prepare(tiny_config(tiers, "method.name=centralized", f"out_dir={tmp_path / 'c'}")))
    assert "timing" not in pooled and "sim_round_seconds" not in pooled["rounds"][0]
    plain = execute(prepare(tiny_config(f"out_dir={tmp_path / 'p'}", "federation.rounds=1")))
    assert "timing" not in plain and "sim_round_seconds" not in plain["rounds"][0]


def test_the_estimate_times_each_round_by_hand(tiny_config):
    """Compute a billion GFLOP/s fast: each client's round is its fp32 model (MiniLM's shape, N values) down and up,
    4 N bytes each way at 8 Mbit/s = 1 MB/s; three rounds; a 1 s deadline caps every round at 1 s."""
    from fedbt.estimate import job_cost

    tiers = "federation.tiers=[{share: 1.0, device: {train_gflops: 1.0e+9, downlink_mbps: 8, uplink_mbps: 8}}]"
    config = tiny_config(tiers, "method.name=fedavg", "model.source=minilm")  # a shipped shape: no weights
    numel = sum(prepare(config).method.arch.param_numel.values())
    assert job_cost("s", "d", "v", 0, config).sim_seconds == pytest.approx(3 * 2 * 4 * numel / MB, rel=1e-6)
    capped = tiny_config(tiers, "method.name=fedavg", "model.source=minilm", "federation.deadline_s=1")
    assert job_cost("s", "d", "v", 0, capped).sim_seconds == pytest.approx(3.0)
    assert job_cost("s", "d", "v", 0, tiny_config("method.name=fedavg", "model.source=minilm")).sim_seconds is None


# ------------------------------------------------------------------------------------ the report


def _timed_copy(path: str, out: Path, round_seconds: float) -> str:
    """A golden run's metrics as a run with devices would record them: every round ``round_seconds`` long."""
    metrics = json.loads(Path(path).read_text())
    for record in metrics["rounds"]:
        record.update({"sim_round_seconds": round_seconds, "sim_server_seconds": 0.0, "deadline_missed": 0})
    metrics["timing"] = {"sim_round_seconds": round_seconds, "deadline_miss_pct": 25.0, "unavailable_pct": 0.0}
    copy = out / Path(path).relative_to(RUNS)
    copy.parent.mkdir(parents=True)
    copy.write_text(json.dumps(metrics))
    return str(copy)


def test_a_timed_study_reports_round_time_misses_and_time_to_target(tmp_path):
    """The golden pre-training runs with simulated time: fedavg's rounds take 120 s, fedbt's 30 s; the target is
    0.22 % above fedavg's final held-out loss of the same seed, which fedbt's seed 1 reaches after its round (30 s)
    and its seed 0 misses by 6e-5. The table keeps to 15 columns (no CPU seconds), the JSON rows carry the fields,
    and the figure of score against simulated time is written."""
    from fedbt.report.build import build_report
    from fedbt.report.spec import from_dict
    from fedbt.report.tables import MAX_COLUMNS
    from tests.test_report import spec_dict

    spec = spec_dict()
    table = spec["tables"][0] | {"timed": True, "target": {"within_pct": 0.22}}
    for row in table["rows"]:
        seconds = 120.0 if row["variant"] == "fedavg" else 30.0
        row["runs"] = {"cs": [_timed_copy(p, tmp_path / "runs", seconds) for p in row["runs"]["cs"]]}
    spec["tables"] = [table]
    written = build_report(from_dict(spec), tmp_path / "out")
    assert tmp_path / "out/figures/pretrain_time.png" in written
    markdown = (tmp_path / "out/tables/pretrain.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| method"))
    assert header.count("|") - 1 <= MAX_COLUMNS and "CPU s" not in header and "analytic FLOP %" not in header
    assert "| sim s / round | deadline miss % |" in header and header.endswith("| cs: sim min to target |")
    rows = {row["variant"]: row for row in json.loads((tmp_path / "out/tables/pretrain.json").read_text())["rows"]}
    assert rows["fedavg"]["sim_round_seconds"] == 120.0 and rows["fedbt"]["deadline_miss_pct"] == 25.0
    assert rows["fedavg"]["time_to_target_s"] == {"cs": 120.0}
    assert rows["fedbt"]["time_to_target"]["cs"]["seconds"] == {"0": None, "1": 30.0}
    lines = {line.split(" | ")[0]: line for line in markdown.splitlines() if line.startswith("| fed")}
    assert lines["| fedavg"].endswith("| 2.0 |") and lines["| fedbt"].endswith("| 0.5 (1/2) |")
    assert "sim min to target" in markdown.splitlines()[-1]


# ------------------------------------------------------------------------------------ planning


def test_the_hetero_study_plans_its_time_columns_and_figure_and_a_bad_target_fails():
    """config/hetero.yaml's tiers have devices: its report spec says so (with the target) and its outputs include
    the time figure; a target needs devices and names the study's per-round score."""
    from fedbt.pipeline import Plan
    from tests.test_planning import study_config

    config = study_config("hetero.yaml")
    plan = Plan(config)
    tables = {table["name"]: table for table in plan.report_spec()["tables"]}
    assert tables["hetero-pretrain"]["timed"] and tables["hetero-pretrain"]["target"] == {"within_pct": 2}
    assert "results/hetero/figures/hetero-finetune_time.png" in plan.report_outputs()["figures"]
    wrong = dict(config, studies={**config["studies"]})
    wrong["studies"]["hetero-finetune"] = {**config["studies"]["hetero-finetune"], "target": {"heldout_mlm_loss": 7}}
    with pytest.raises(ConfigError, match=r"studies.hetero-finetune.target.heldout_mlm_loss': unknown score; .*dev_"):
        Plan(wrong)
    plain = study_config("test.yaml")
    study = next(iter(plain["studies"]))
    plain["studies"][study]["target"] = {"within_pct": 1}
    with pytest.raises(ConfigError, match=rf"studies.{study}.target': time to a target needs devices"):
        Plan(plain)
    assert "timed" not in Plan(study_config("test.yaml")).report_spec()["tables"][0], "other studies: unchanged spec"
