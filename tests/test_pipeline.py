"""The Snakemake pipeline: config schema, dry-run plans of the shipped studies, reruns, a tiny end-to-end run."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def snakemake(workdir: Path, configfile: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the pipeline in ``workdir`` (its own .snakemake and results) on a study config."""
    command = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--configfile", str(configfile)]
    command += ["--config", f"data_dir={ROOT / 'data'}", *args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout)


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


@pytest.mark.parametrize(
    "name",
    [
        "config.yaml",
        "paper.yaml",
        "test.yaml",
        "vision.yaml",
        "test-vision.yaml",
        "hetero.yaml",
        "budget.yaml",
        "budget-rounds.yaml",
        "privacy.yaml",
    ],
)
def test_shipped_configs_pass_the_schema(name):
    from snakemake.utils import validate

    validate(load(name), str(SCHEMA))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda c: c.update(thread=2), "thread"),
        (lambda c: c.update(threads="two"), "threads"),
        (lambda c: c["studies"]["pretrain"].update(scenario="pre"), "scenario"),
        (lambda c: c["studies"]["pretrain"].pop("seeds"), "seeds"),
        (lambda c: c["variants"]["fedbt"].update(optons={}), "optons"),
        (lambda c: c["variants"]["fedbt"].update(grid={"local.weight_decay": []}), "grid"),
        (lambda c: c["variants"]["fedbt"].update(grid={"local.weight_decay": [[0.1]]}), "grid"),
    ],
)
def test_schema_rejects_bad_configs_naming_the_key(change, key):
    from snakemake.utils import validate

    config = load("test.yaml")
    change(config)
    with pytest.raises(Exception, match=key):
        validate(config, str(SCHEMA))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["defaults"].update({"federation.rouns": 2}), "federation.rouns"),
        (lambda c: c["studies"]["pretrain"]["variants"].append("fedbt-x"), "studies.pretrain.variants"),
        (lambda c: c["studies"]["finetune"]["data"].append("cs"), "studies.finetune.data"),
        (
            lambda c: c["variants"]["fedbt"].update(grid={"method.options.muu": [0.1, 1.0]}),
            "variants.fedbt.grid.method.options.muu",
        ),
    ],
)
def test_bad_config_fails_at_planning_naming_the_key(tmp_path, change, message):
    config = load("test.yaml")
    change(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, path, "-n")
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (tmp_path / "results" / "runs").exists()


def test_lint_is_clean_and_the_default_profile_is_found(tmp_path):
    """`snakemake --lint` has nothing to say, and a plain call picks up profiles/default (next to the Snakefile)."""
    result = subprocess.run(
        [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--lint"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
    assert f"Using workflow specific profile {ROOT / 'profiles' / 'default'}" in result.stdout + result.stderr


def test_config_readme_documents_every_schema_key():
    from fedbt.config_docs import README, updated

    schema = yaml.safe_load(SCHEMA.read_text())
    text = README.read_text()
    assert updated(text, schema) == text, "config/README.md is out of date: run `make config-docs`"
    for key in ("resources.gpus", "tracking.experiment", "studies.<study>.seeds", "students.<student>.<flag>"):
        assert f"| `{key}` |" in text


@pytest.mark.parametrize(
    ("name", "runs", "starts"),
    [
        ("config.yaml", 69, 1),
        ("ablation.yaml", 102, 1),
        pytest.param("paper.yaml", 1835, 0, marks=pytest.mark.heavy),  # a 1,835-job dry run: 4-5 minutes
        ("vision.yaml", 45, 1),
        ("hetero.yaml", 87, 1),
        ("budget.yaml", 48, 1),
        ("budget-rounds.yaml", 12, 1),
        ("privacy.yaml", 39, 1),
    ],
)
def test_shipped_studies_plan_offline(tmp_path, name, runs, starts):
    # paper.yaml's 1,835 jobs take Snakemake about 230 s to plan on 2 quiet cores, 430-600 s beside a study
    result = snakemake(tmp_path, ROOT / "config" / name, "-n", "--quiet", "rules", timeout=1200)
    assert result.returncode == 0, result.stderr
    counts = planned_rules(result)
    assert counts["run"] == runs
    assert counts.get("starting_model", 0) == starts
    assert counts["report"] == 1


def test_unknown_starting_model_fails_at_planning(tmp_path):
    config = load("test-vision.yaml")
    config["data"]["cifar10"]["start"] = "vit-missing"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, path, "-n")
    assert result.returncode != 0
    assert "data.cifar10.start" in result.stderr + result.stdout and "vit-tiny-central" in result.stderr + result.stdout


@pytest.mark.e2e
def test_tiny_vision_pipeline_builds_the_starting_model_once(tmp_path):
    result = snakemake(tmp_path, ROOT / "config" / "test-vision.yaml", "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / "results"
    start = results / "runs" / "_start" / "vit-tiny-central"
    assert (start / "model" / "preprocessor_config.json").is_file()
    for run in ("vision-pretrain/cifar10/fedbt", "vision-finetune/cifar10-ft/fedbt-ft"):
        config = yaml.safe_load((results / "runs" / run / "seed0" / "config.yaml").read_text())
        assert config["model"]["source"] == str(start / "model").removeprefix(f"{tmp_path}/")
    table = (results / "tables" / "vision-pretrain.md").read_text()
    assert "vit-base upload %" in table and "starting model pre-trained by the pipeline" in table
    assert "| fedbt |" in table and "| fedbt-ft |" in (results / "tables" / "vision-finetune.md").read_text()


def planned_rules(result: subprocess.CompletedProcess) -> dict[str, int]:
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("job ")) + 2
    counts = {}
    for line in lines[start:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.mark.e2e
def test_tiny_pipeline_end_to_end(tmp_path):
    config = ROOT / "config" / "test.yaml"
    result = snakemake(tmp_path, config, "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / "results"
    for study in ("pretrain", "finetune"):
        for suffix in ("md", "tex", "html"):
            assert (results / "tables" / f"{study}.{suffix}").stat().st_size > 0
        for kind in ("rounds", "pareto", "compute"):
            for suffix in ("png", "pdf"):
                assert (results / "figures" / f"{study}_{kind}.{suffix}").stat().st_size > 0
    assert (results / "figures" / "layer_schedule.png").is_file()
    assert "| fedbt |" in (results / "tables" / "pretrain.md").read_text()

    with sqlite3.connect(results / "mlflow.db") as db:
        experiments = {name for (name,) in db.execute("select name from experiments")}
        finished = db.execute("select count(*) from runs where status = 'FINISHED' and lifecycle_stage = 'active'")
        assert {"pretrain", "finetune"} <= experiments
        assert finished.fetchone()[0] == 4
        members = dict(db.execute("select key, count(*) from tags where key like 'study.%' group by key"))
        assert members == {"study.pretrain": 2, "study.finetune": 2, "study.shared": 1}, "the shared run in both"

    html = snakemake(tmp_path, config, "--report", str(tmp_path / "report.html"))
    assert html.returncode == 0, html.stderr[-2000:]
    assert "pretrain_pareto.png" in (tmp_path / "report.html").read_text()

    again = snakemake(tmp_path, config, "-n", "--quiet", "rules")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr

    changed = config.read_text().replace("local_layers: 2", "local_layers: 3")
    (tmp_path / "changed.yaml").write_text(changed)
    plan = snakemake(tmp_path, tmp_path / "changed.yaml", "-n", "--quiet", "rules")
    assert planned_rules(plan) == {"all": 1, "report": 1, "run": 1}
    assert "pretrain/cs/fedbt/seed0" in snakemake(tmp_path, tmp_path / "changed.yaml", "-n").stdout


@pytest.mark.e2e
def test_an_lr_from_study_runs_at_the_point_the_other_study_chose_on_dev(tmp_path):
    """A study with ``lr_from`` waits for the other study's grid and runs each method once, at its dev choice."""
    import json

    config = load("test.yaml")
    config["scenarios"]["pretrain"] |= {"data.dev_examples": 8, "evaluation.task": None}
    config["data"]["cs"] = {"scenario": "pretrain", "overrides": {"data.corpus": "cs"}}
    pretrain = {"scenario": "pretrain", "data": ["cs"], "variants": ["fedavg"], "seeds": [0]}
    config["studies"] = {
        "grid": pretrain | {"title": "On a grid", "lr_grid": [1.0e-3, 3.0e-1]},
        "again": pretrain | {"title": "At the grid's choice", "seeds": [1], "lr_from": "grid"},
    }
    (tmp_path / "lr_from.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, tmp_path / "lr_from.yaml", "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    tables = tmp_path / "results" / "tables"
    chosen = json.loads((tables / "grid.json").read_text())["rows"][0]["lr"]["cs"]
    assert chosen["chosen"] in ("lr0.001", "lr0.3") and chosen["dev"]["lr0.001"] != chosen["dev"]["lr0.3"]
    run = tmp_path / "results" / "runs" / "again" / "cs" / "fedavg-tuned-in-grid" / "seed1"
    assert json.loads((run / "grid_choice.json").read_text())["chosen"] == chosen["chosen"]
    assert yaml.safe_load((run / "config.yaml").read_text())["local"]["lr"] == float(chosen["chosen"][2:])
    shown = json.loads((tables / "again.json").read_text())["rows"][0]["lr"]["cs"]
    assert shown == chosen | {"study": "grid"}
    with sqlite3.connect(tmp_path / "results" / "mlflow.db") as db:
        tags = dict(
            db.execute(
                "select key, value from tags where run_uuid in (select run_uuid from tags"
                " where key = 'tuned_in' and value = 'grid')"
            )
        )
    assert tags["tuned_point"] == chosen["chosen"] and tags["study.again"] == "yes"
