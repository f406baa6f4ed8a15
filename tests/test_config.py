"""Config loading: defaults, overrides, and clear errors for bad input before any work."""

import pytest

from fedbt.config import RunConfig, apply_override, load_config, to_flat_dict, to_yaml
from fedbt.errors import ConfigError

from .conftest import REPO


def test_defaults_and_shipped_configs_load():
    assert load_config(None).federation.clients == 6
    for path in sorted((REPO / "config/runs").glob("*.yaml")):
        assert isinstance(load_config(path), RunConfig)


def test_override_parses_yaml_values():
    config = load_config(None, ["federation.rounds=7", "evaluation.seeds=[1, 2]", "data.max_examples=null"])
    assert config.federation.rounds == 7
    assert config.evaluation.seeds == [1, 2]
    assert config.data.max_examples is None


def test_int_accepted_for_float():
    assert load_config(None, ["local.lr=1"]).local.lr == 1.0


@pytest.mark.parametrize(
    ("override", "key", "fragment"),
    [
        (
            "federation.rouns=3",
            "federation.rouns",
            "allowed keys here: aggregation, budget_policy, clients, deadline_percentile, deadline_s, fraction",
        ),
        ("federation.rounds=three", "federation.rounds", "expected int"),
        ("federation.rounds=0", "federation.rounds", "must be >= 1"),
        ("federation.fraction=1.5", "federation.fraction", "must be in (0, 1]"),
        ("federation.partition.scheme=random", "federation.partition.scheme", "allowed values: iid, uniform"),
        ("federation.aggregation=median", "federation.aggregation", "allowed values: weighted, uniform"),
        ("local.device=tpu", "local.device", "allowed values: auto, cpu, cuda"),
        ("local.objective=classification", "local.objective", "pretrain scenario trains one of mim, mlm"),
        ("local.mlm_probability=1.5", "local.mlm_probability", "must be in (0, 1)"),
        ("local.steps=true", "local.steps", "expected int or float or null"),
        ("evaluation.seeds=[]", "evaluation.seeds", "at least one seed"),
        ("federation=3", "federation", "expected a mapping"),
        ("data.max_examples=2", "data.max_examples", ">= federation.clients"),
    ],
)
def test_bad_values_name_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert error.value.key == key
    assert key in str(error.value)
    assert fragment in str(error.value)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        apply_override({}, "federation.rounds")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    config = load_config(REPO / "config/runs/smoke.yaml", ["seed=3"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(config))
    assert load_config(path) == config
    flat = to_flat_dict(config)
    assert flat["federation.partition.scheme"] == "iid"
    assert flat["seed"] == 3


def test_a_float_written_without_a_dot_is_a_float():
    config = load_config(None, ["local.lr=3e-4", "local.weight_decay=1E-2"])
    assert config.local.lr == 3e-4 and config.local.weight_decay == 0.01
    with pytest.raises(ConfigError, match="local.lr"):
        load_config(None, ["local.lr=fast"])
