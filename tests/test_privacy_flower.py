"""Client-level DP over Flower: the same clipping (on the ClientApp), noise and accounting as ``fedbt run``, so the
same run gives the same epsilon and, on CPU with the same seed and one thread, bit-identical results."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flwr", reason="needs the Flower extra: pip install -e '.[flower]' (make test installs it)")

from tests.test_flower import assert_same_run, in_process, run_settings, simulation  # noqa: E402, F401

pytestmark = [pytest.mark.flower, pytest.mark.xdist_group("flower")]
DP = ("federation.aggregation=uniform", "privacy.clip=0.5", "privacy.noise_multiplier=1.0", "privacy.delta=1e-4")


@pytest.mark.parametrize("noise", ["central", "distributed"])
def test_a_private_run_over_flower_equals_in_process(simulation, tmp_path, noise):  # noqa: F811
    settings = run_settings(tmp_path, "method.name=fedbt", "federation.fraction=0.67", *DP, f"privacy.noise={noise}")
    run = simulation.run(settings, timeout=900)
    assert run.succeeded, f"{run.status}\n{run.output[-4000:]}\n{simulation.logs()}"
    reference = in_process(settings, tmp_path / "reference")
    assert_same_run(tmp_path / "run", tmp_path / "reference")
    flower = json.loads((tmp_path / "run/metrics.json").read_text())
    assert flower["privacy"] == reference["privacy"]
    assert flower["final"]["privacy.epsilon"] == reference["final"]["privacy.epsilon"] > 0
    assert [r["epsilon"] for r in flower["rounds"]] == [r["epsilon"] for r in reference["rounds"]]
