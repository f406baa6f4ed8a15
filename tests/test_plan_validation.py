"""Plan-time validation of the methods: planning builds every variant's method with its options (weight-free), so
a bad option fails before any job runs, named where the study config sets it."""

from __future__ import annotations

import pytest
import yaml

from fedbt.errors import ConfigError
from fedbt.pipeline import Plan

from .test_pipeline import snakemake
from .test_planning import study_config


def plan_error(config: dict) -> ConfigError:
    with pytest.raises(ConfigError) as error:
        Plan(config)
    return error.value


def test_an_unknown_option_names_the_variant_the_key_and_the_allowed_keys():
    config = study_config("test.yaml")
    config["variants"]["fedbt"]["options"] = {"local_layers": 2, "bogus": 1}
    error = plan_error(config)
    assert error.key == "variants.fedbt.options.bogus"
    assert str(error).endswith("method fedbt: unknown key; allowed keys here: local_layers")


def test_an_option_of_the_wrong_type_fails_at_planning():
    config = study_config("test.yaml")
    config["variants"]["fedbt"]["options"] = {"local_layers": "two"}
    error = plan_error(config)
    assert error.key == "variants.fedbt.options.local_layers" and "'two'" in str(error)


def test_the_method_validates_its_options_on_the_runs_architecture():
    """test.yaml's tiny BERT has 4 layers: FedBT's L_k = 5 is refused by FedBT's own validate()."""
    config = study_config("test.yaml")
    config["variants"]["fedbt"]["options"] = {"local_layers": 5}
    error = plan_error(config)
    assert error.key == "variants.fedbt.options.local_layers"
    assert "L_k = 5 must be in 1..4" in str(error)
    config["variants"]["fedbt"]["options"] = {"local_layers": 4}
    assert len(Plan(config).jobs) == 4


def test_a_job_from_a_starting_model_is_checked_on_its_base_architecture():
    """config.yaml's cs jobs start from minilm-mlm, not built yet: its base source, MiniLM, has 6 layers."""
    config = study_config("config.yaml")
    config["variants"]["fedbt"]["options"] = {"local_layers": 7}
    assert "L_k = 7 must be in 1..6" in str(plan_error(config))
    config["variants"]["fedbt"]["options"] = {"local_layers": 6}
    Plan(config)


def test_where_the_architecture_is_unknown_at_plan_time_the_options_are_parsed():
    """A student still to distil, or a hub id that is not shipped (offline): options only, strictly."""
    config = study_config("config.yaml")
    config["variants"]["distill"]["options"] = {"bogus": 1}
    error = plan_error(config)
    assert error.key == "variants.distill.options.bogus" and "allowed keys here: student" in str(error)
    config = study_config("test.yaml")
    config["defaults"]["model.source"] = "someone/unshipped-bert"
    config["variants"]["fedbt"]["options"] = {"local_layers": 50}  # no arch to check it against
    assert len(Plan(config).jobs) == 4
    config["variants"]["fedbt"]["options"] = {"layers": 2}
    assert plan_error(config).key == "variants.fedbt.options.layers"


def test_a_grid_over_an_option_is_checked_as_the_same_method():
    config = study_config("test.yaml")
    config["variants"]["fedbt"]["grid"] = {"method.options.local_layers": [2, 5]}
    error = plan_error(config)
    assert error.key == "variants.fedbt.grid.method.options.local_layers" and "L_k = 5" in str(error)


def test_snakemake_dry_run_fails_on_a_bogus_option(tmp_path):
    config = study_config("test.yaml")
    config["variants"]["fedbt"]["options"] = {"bogus": 1}
    path = tmp_path / "bogus.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, path, "-n")
    assert result.returncode != 0
    output = result.stderr + result.stdout
    assert "config key 'variants.fedbt.options.bogus': method fedbt: unknown key; allowed keys here: local_layers" in (
        output
    )
    assert not (tmp_path / "results" / "runs").exists()
