"""Client-level differential privacy (fedbt/federated/privacy.py, fedbt/privacy_accounting.py): clipping, the noise's
scale, epsilon against the library, the checks before training, and runs that repeat and resume exactly."""

from __future__ import annotations

import math

import dp_accounting
import pytest
import torch
from dp_accounting.rdp import RdpAccountant
from safetensors.torch import load_file

from fedbt.config import PrivacyConfig
from fedbt.errors import ConfigError
from fedbt.federated.aggregate import WeightedAverage
from fedbt.federated.privacy import clip, l2_norm, privatize, server_clip, update_of
from fedbt.privacy_accounting import check_target, epsilons, run_epsilons, sample_size
from fedbt.run import execute, prepare
from tests.conftest import kill_and_resume

DP = ("federation.aggregation=uniform", "privacy.clip=0.5", "privacy.noise_multiplier=1.0", "privacy.delta=1e-4")
FEDERATION = ("federation.clients=6", "federation.fraction=0.5")
HALF_WIDTH = "federation.tiers=[{share: 0.5, local_layers: 2}, {share: 0.5}]"


def random_update(seed: int, scale: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """An upload and the values its client received (two tensors, update norm about ``scale * 30``)."""
    generator = torch.Generator().manual_seed(seed)
    received = {"a.weight": torch.randn(20, 30, generator=generator), "b.bias": torch.randn(300, generator=generator)}
    upload = {n: t + scale * torch.randn(t.shape, generator=generator) for n, t in received.items()}
    return upload, received


# --------------------------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("bound", [0.01, 1.0, 5.0])
def test_the_clipped_update_is_at_most_c_as_one_vector(bound):
    upload, received = random_update(0, scale=0.2)
    update = update_of(upload, received)
    assert l2_norm(clip(update, bound)[0]) <= bound * (1 + 1e-12)
    clipped, norm = privatize(upload, received, PrivacyConfig(clip=bound, noise_multiplier=0.0), 0, 0, 0, 1)
    after = l2_norm(update_of(clipped, received))
    assert norm == pytest.approx(l2_norm(update))
    rounding = 2**-24 * l2_norm(clipped)  # the upload is stored in float32: at most half an ulp per element
    assert after <= bound + rounding
    assert after == pytest.approx(min(bound, norm), rel=1e-3), "a longer update is scaled to C, not cut"
    assert {n: t.dtype for n, t in clipped.items()} == {n: t.dtype for n, t in upload.items()}
    direction = [torch.cat([(clipped[n] - received[n]).flatten() for n in sorted(upload)])]
    direction.append(torch.cat([(upload[n] - received[n]).flatten() for n in sorted(upload)]))
    assert torch.nn.functional.cosine_similarity(*direction, dim=0) > 0.99999, "clipping keeps the direction"


def test_the_server_clips_again_only_what_arrives_too_long():
    upload, received = random_update(1, scale=0.2)
    privacy = PrivacyConfig(clip=1.0)
    clipped, _ = privatize(upload, received, privacy, 0, 0, 0, 1)
    assert all(torch.equal(server_clip(clipped, received, privacy)[n], clipped[n]) for n in upload)
    assert l2_norm(update_of(server_clip(upload, received, privacy), received)) <= 1.0 + 1e-5


# ------------------------------------------------------------------------------------------------ noise


def test_distributed_noise_on_a_zero_update_has_std_sigma_c_over_sqrt_m():
    received = {"w": torch.zeros(400, 500)}
    privacy = PrivacyConfig(clip=0.3, noise_multiplier=2.0, noise="distributed")
    noisy, norm = privatize(received, received, privacy, seed=0, round_idx=0, client_id=0, participants=4)
    assert norm == 0.0
    n = noisy["w"].numel()
    expected = 2.0 * 0.3 / math.sqrt(4)
    # the sample std of n normals is within 4 standard errors (expected / sqrt(2 n)) of the true std
    assert abs(noisy["w"].std().item() - expected) < 4 * expected / math.sqrt(2 * n)
    assert abs(noisy["w"].mean().item()) < 4 * expected / math.sqrt(n)


def test_central_noise_on_zero_sums_has_std_sigma_c():
    average = WeightedAverage({"w": (300, 400), "b": (1000,)})
    average.add({"w": torch.zeros(300, 400), "b": torch.zeros(1000)}, 1.0)
    std = 1.5 * 0.2
    average.add_noise(std, torch.Generator().manual_seed(0))
    noise = torch.cat([t.flatten() for t in average.result().values()])
    assert abs(noise.std().item() - std) < 4 * std / math.sqrt(2 * noise.numel())


def test_noise_is_seeded_by_run_client_and_round():
    upload, received = random_update(2, scale=0.1)
    privacy = PrivacyConfig(clip=1.0, noise="distributed")
    first = privatize(upload, received, privacy, 7, 3, 1, 5)[0]
    assert all(torch.equal(first[n], privatize(upload, received, privacy, 7, 3, 1, 5)[0][n]) for n in upload)
    for keys in ((8, 3, 1), (7, 4, 1), (7, 3, 2)):
        other = privatize(upload, received, privacy, *keys, 5)[0]
        assert not torch.equal(first["a.weight"], other["a.weight"])


# --------------------------------------------------------------------------------------------- accounting


def test_epsilon_equals_the_library_for_sampling_without_replacement():
    """(n = 100, k = 10, sigma = 1, 5 rounds, delta = 1e-5): the library's RDP accountant on the same event, with
    the noise multiplier taken against the replace-one sensitivity 2C; and a pinned value."""
    accountant = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(100, 10, dp_accounting.GaussianDpEvent(0.5))
    accountant.compose(event, 5)
    reference = accountant.get_epsilon(1e-5)
    ours = run_epsilons(PrivacyConfig(noise_multiplier=1.0, delta=1e-5), 100, 0.1, 5)
    assert ours[-1] == pytest.approx(reference, rel=1e-12)
    assert ours[-1] == pytest.approx(13.8171, abs=1e-3)
    assert list(ours) == sorted(ours), "epsilon grows with every round"


def test_every_client_every_round_is_the_composed_gaussian():
    accountant = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp_accounting.GaussianDpEvent(2.0), 3)
    assert epsilons(4.0, 6, 6, 3, 1e-5)[-1] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)


def test_the_sample_size_is_the_simulators():
    from fedbt.federated.simulator import Simulator

    class Stub:
        clients = [[{}]] * 100
        setup = type("S", (), {"fraction": 0.13, "seed": 0})()

    assert len(Simulator.selected_clients(Stub(), 0)) == sample_size(100, 0.13) == 13
    assert sample_size(100, 1.0) == 100 and sample_size(3, 0.1) == 1


def test_no_noise_spends_infinite_epsilon():
    assert epsilons(0.0, 10, 5, 2, 1e-5) == (math.inf, math.inf)


def test_an_unreachable_target_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"privacy.target_epsilon.*at least 1\.5"):
        check_target(PrivacyConfig(noise_multiplier=1.0, delta=1e-4, target_epsilon=5.0), 100, 0.1, 5)
    check_target(PrivacyConfig(noise_multiplier=2.0, delta=1e-4, target_epsilon=5.0), 100, 0.1, 5)


# ---------------------------------------------------------------------------------- checks before training


@pytest.mark.parametrize(
    ("extra", "key", "why"),
    [
        (("federation.aggregation=weighted",), "federation.aggregation", "uniform"),
        (("method.name=scaffold",), "privacy", "upload_extra"),
        (("method.name=centralized",), "privacy", "one place"),
        (("method.name=inclusivefl", "federation.tiers=[{share: 1.0, local_layers: 4}]"), "privacy", "receive_upload"),
        (("method.name=heterofl", HALF_WIDTH, "privacy.noise=distributed"), "privacy.noise", "width slices"),
        (("privacy.clip=0",), "privacy.clip", "> 0"),
        (("privacy.target_epsilon=0.5",), "privacy.target_epsilon", "at least"),
    ],
)
def test_what_dp_cannot_cover_fails_before_training(tiny_config, extra, key, why):
    with pytest.raises(ConfigError, match=rf"'{key}'.*{why}"):
        prepare(tiny_config(*DP, *extra))


def test_heterofl_with_central_noise_is_allowed(tiny_config):
    prepare(tiny_config(*DP, "method.name=heterofl", HALF_WIDTH))


# ---------------------------------------------------------------------------------------------- runs


def test_clipping_without_noise_bounds_the_global_step(tiny_config, tmp_path):
    """With sigma 0 the global step of FedAvg is the mean of clipped updates: at most C."""
    config = tiny_config(*DP, "privacy.noise_multiplier=0", "privacy.clip=0.05", "federation.rounds=1")
    prepared = prepare(config)
    metrics = execute(prepared)
    from fedbt.models import load_model

    start = load_model(prepared.model_config, prepared.head, config.seed, None).state_dict()
    final = load_file(str(prepared.out_dir / "model/model.safetensors"))
    step = math.sqrt(sum(float((final[n] - start[n]).double().square().sum()) for n in final if n in start))
    assert 0 < step <= 0.05 * (1 + 1e-4)
    record = metrics["rounds"][0]
    assert record["epsilon"] is None and record["dp_clipped_fraction"] == 1.0 and record["dp_update_norm"] > 0.05
    assert "privacy.epsilon" not in metrics["final"]


@pytest.mark.parametrize("noise", ["central", "distributed"])
def test_a_private_run_repeats_and_resumes_exactly(tiny_config, tmp_path, monkeypatch, noise):
    extra = [*DP, *FEDERATION, f"privacy.noise={noise}", "method.name=fedbt"]
    reference, _ = kill_and_resume(tiny_config, tmp_path, monkeypatch, extra)
    spent = run_epsilons(PrivacyConfig(noise_multiplier=1.0, delta=1e-4), 6, 0.5, 3)
    assert [r["epsilon"] for r in reference["rounds"]] == pytest.approx(list(spent))
    assert reference["privacy"]["epsilon"] == reference["final"]["privacy.epsilon"] == pytest.approx(spent[-1])
    assert reference["privacy"]["sampled_per_round"] == 3
    dims = {r["dp_update_dim"] for r in reference["rounds"]}
    assert all(d < 0.5 * reference["costs"]["total_download_params"] / 9 for d in dims), "fedbt uploads a layer"


def test_central_and_distributed_noise_differ_and_without_privacy_nothing_changes(tiny_config, tmp_path):
    runs = {}
    for name, extra in {
        "central": (*DP, *FEDERATION),
        "distributed": (*DP, *FEDERATION, "privacy.noise=distributed"),
        "none": FEDERATION,
    }.items():
        runs[name] = execute(prepare(tiny_config(*extra, "federation.rounds=1", f"out_dir={tmp_path / name}")))
    losses = {name: m["rounds"][0]["heldout_mlm_loss"] for name, m in runs.items()}
    assert len(set(losses.values())) == 3
    assert not any(k.startswith(("dp_", "epsilon")) for k in runs["none"]["rounds"][0])
    assert "privacy" not in runs["none"]


def test_epsilon_is_tracked_in_mlflow_per_round_and_at_the_end(tiny_config, mlflow_uri):
    from mlflow.tracking import MlflowClient

    config = tiny_config(*DP, *FEDERATION, "federation.rounds=2", "tracking.enabled=true", f"tracking.uri={mlflow_uri}")
    metrics = execute(prepare(config))
    run = MlflowClient(tracking_uri=mlflow_uri).get_run(metrics["mlflow_run_id"])
    history = MlflowClient(tracking_uri=mlflow_uri).get_metric_history(run.info.run_id, "epsilon")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [r["epsilon"] for r in metrics["rounds"]]
    )
    assert run.data.metrics["privacy.epsilon"] == pytest.approx(metrics["privacy"]["epsilon"])
    assert run.data.params["privacy.noise_multiplier"] == "1.0"
