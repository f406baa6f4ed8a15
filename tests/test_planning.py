"""The pipeline's planning (fedbt/pipeline.py) without Snakemake: jobs, their overrides, shared runs, the
studies each run belongs to, the report specification and the errors that name the config key."""

from __future__ import annotations

import copy

import pytest
import yaml
from snakemake.utils import validate

from fedbt.config import load_config
from fedbt.errors import ConfigError, FedBTError
from fedbt.pipeline import Layout, Plan, as_sets, job_environment, point_label, set_flags, yaml_value
from fedbt.tracking import StudyScope

from .conftest import REPO

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def study_config(name: str) -> dict:
    """A shipped study config as Snakemake sees it: validated, the schema's defaults filled in."""
    config = yaml.safe_load((REPO / "config" / name).read_text())
    validate(config, str(SCHEMA))
    return config


@pytest.fixture(scope="module")
def default_plan() -> Plan:
    return Plan(study_config("config.yaml"))


def test_layout_is_spelled_in_one_place():
    layout = Layout("out")
    assert layout.run_dir("pretrain", "cs", "fedbt", 0) == "out/runs/pretrain/cs/fedbt/seed0"
    assert layout.run_metrics("{study}", "{data}", "{variant}", "{seed}") == (
        "out/runs/{study}/{data}/{variant}/seed{seed}/metrics.json"
    )
    assert layout.run_log("a", "b", "c", 1) == "out/runs/a/b/c/seed1.log"
    assert layout.student_flag("s") == "out/runs/_students/s/distill_costs.json"
    assert layout.start_metrics("v") == "out/runs/_start/v/metrics.json"
    assert layout.mlflow_uri == "sqlite:///out/mlflow.db"


@pytest.mark.parametrize(
    ("name", "runs"),
    [
        ("config.yaml", 69),
        ("ablation.yaml", 102),
        ("hetero.yaml", 87),
        ("privacy.yaml", 39),
        pytest.param("paper.yaml", 1835, marks=pytest.mark.heavy),  # about 80 s
        ("test.yaml", 4),
        ("budget.yaml", 48),
        ("budget-rounds.yaml", 12),
    ],
)
def test_shared_jobs_run_once_in_the_first_study(name, runs):
    plan = Plan(study_config(name))
    assert len(plan.jobs) == runs
    assert len({job.identity for job in plan.jobs.values()}) == runs


def test_a_job_shared_by_studies_lives_in_the_first_study_and_feeds_each_table():
    plan = Plan(study_config("ablation.yaml"))
    fedavg_cs = [plan.layout.run_metrics("ablation", "cs", "fedavg-lr0.0003", seed) for seed in (0, 1, 2)]
    tables = {t["name"]: t for t in plan.report_spec()["tables"]}
    for study in ("ablation", "depth-pretrain", "pretrain-extra"):
        row = next(r for r in tables[study]["rows"] if r["variant"] == "fedavg")
        assert row["lr_runs"]["lr0.0003"]["cs"] == fedavg_cs, study
    assert "results/ablation/runs/depth-pretrain/cs/fedavg-lr0.0003/seed0" not in plan.jobs
    assert "results/ablation/runs/depth-pretrain/cs/fedbt-L2-lr0.0003/seed0" in plan.jobs


def run_tags(job) -> dict[str, str]:
    """The tags a job's MLflow run carries that study scopes match."""
    tags = {"data": job.data, "variant": job.variant, "seed": str(job.seed)}
    return tags | ({"grid": point_label(job.point)} if job.point else {})


def test_every_study_scope_holds_exactly_the_runs_its_table_reads(default_plan):
    """The MLflow study filter (run tags matched against the scope) selects the runs of the study's table."""
    assert_scopes_hold_their_tables(default_plan)


def assert_scopes_hold_their_tables(default_plan: Plan) -> None:
    scopes = {s["name"]: StudyScope.from_dict(s) for group in default_plan.study_scopes().values() for s in group}
    for table in default_plan.report_spec()["tables"]:
        cells = [row["runs"] for row in table["rows"]]
        cells += [runs for row in table["rows"] for runs in row.get("lr_runs", {}).values()]
        wanted = {path for cell in cells for paths in cell.values() for path in paths}
        scope = scopes[table["name"]]
        selected = {
            default_plan.layout.run_metrics(job.study, job.data, job.label, job.seed)
            for job in default_plan.jobs.values()
            if scope.includes(run_tags(job)) and job.scenario == table["scenario"]
        }
        assert selected == wanted, table["name"]


def test_experiments_are_one_per_scenario_and_named_by_the_config():
    plan = Plan(study_config("vision.yaml"))
    assert set(plan.study_scopes()) == {"vision-pretrain", "vision-finetune"}
    assert set(Plan(study_config("config.yaml")).study_scopes()) == {"pretrain", "finetune"}


def test_job_overrides_in_order_and_loadable(default_plan):
    job = default_plan.job("pretrain", "cs", "distill-lr0.001", "0")
    sets = default_plan.job_sets(job)
    assert sets[0] == "data.data_dir=data" and sets[1] == "data.partition_dir=results/partitions"
    assert "method.options={student: results/runs/_students/minilm-L3}" in sets
    assert "tracking.tags={data: cs, grid: lr0.001, variant: distill}" in sets
    assert "tracking.experiment=pretrain" in sets and "study=pretrain" in sets
    config = load_config(None, sets)
    assert config.name == "cs-distill-lr0.001-seed0" and config.method.name == "distill"
    assert config.federation.rounds == 3 and config.evaluation.task is None and config.local.lr == 1.0e-3
    assert config.data.dev_examples == 64 and config.data.heldout_examples == 128
    student, start, stamp = default_plan.run_inputs(job)
    assert (student, start) == (
        "results/runs/_students/minilm-L3/distill_costs.json",
        "results/runs/_start/minilm-mlm/metrics.json",
    )
    assert stamp == default_plan.token_stamp(job) and stamp.startswith("results/cache/stamps/")
    flags = default_plan.student_flags("minilm-L3")
    assert flags.startswith("--layers 0,2,4") and flags.endswith("--teacher results/runs/_start/minilm-mlm/model")
    assert default_plan.student_inputs("minilm-L3") == ["results/runs/_start/minilm-mlm/metrics.json"]


def test_variant_overrides_win_over_defaults():
    config = study_config("test.yaml")
    config["variants"]["fedbt"]["overrides"] = {"federation.rounds": 3}
    plan = Plan(config)
    rounds = [s for s in plan.job_sets(plan.job("pretrain", "cs", "fedbt", 0)) if s.startswith("federation.rounds")]
    assert rounds == ["federation.rounds=1", "federation.rounds=3"]
    assert load_config(None, plan.job_sets(plan.job("pretrain", "cs", "fedbt", 0))).federation.rounds == 3


def test_starting_model_feeds_the_data_sets_that_name_it():
    plan = Plan(study_config("vision.yaml"))
    job = next(j for j in plan.jobs.values() if j.data == "cifar10-4-dir")
    model = "results/vision/runs/_start/vit-cifar-central/model"
    assert f"model.source={model}" in plan.job_sets(job)
    assert plan.run_inputs(job) == ["results/vision/runs/_start/vit-cifar-central/metrics.json"]
    start = load_config(None, plan.start_sets("vit-cifar-central"))
    assert start.study == "_start" and start.tracking.experiment == "vision-pretrain"


def test_resources_and_tracking_settings_reach_the_jobs():
    plan = Plan(study_config("paper.yaml"))
    assert plan.resources() == {"gpu": 1, "mem_mb": 16000, "runtime": 720}
    assert Plan(study_config("test.yaml")).resources()["gpu"] == 0
    sets = plan.job_sets(next(iter(plan.jobs.values())))
    assert "tracking.log_model=false" in sets and "tracking.uri=sqlite:///results/mlflow.db" in sets


def test_jobs_keep_no_model_unless_asked_and_starting_models_are_kept():
    config = study_config("config.yaml")
    plan = Plan(config)
    job = next(iter(plan.jobs.values()))
    assert load_config(None, plan.job_sets(job)).keep_model is False
    assert load_config(None, plan.start_sets("minilm-mlm")).keep_model is True, "later jobs read model/"
    config["keep_models"] = True
    assert load_config(None, Plan(config).job_sets(job)).keep_model is True


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda c: c["studies"]["pretrain"]["variants"].append("fedbt-x"), "studies.pretrain.variants[2]"),
        (lambda c: c["studies"]["finetune"]["data"].append("cs"), "studies.finetune.data[1]"),
        (lambda c: c["studies"]["pretrain"]["data"].append("nope"), "studies.pretrain.data[1]"),
        (lambda c: c["studies"]["pretrain"].update(reference="lora"), "studies.pretrain.reference"),
        (lambda c: c["variants"]["fedbt"].update(student="nobody"), "variants.fedbt.student"),
        (lambda c: c["data"]["cs"].update(start="nothing"), "data.cs.start"),
        (lambda c: c.update(students={"s": {"start": "nothing", "layers": "0"}}), "students.s.start"),
    ],
)
def test_bad_study_config_names_the_key(change, key):
    config = copy.deepcopy(study_config("test.yaml"))
    change(config)
    with pytest.raises(ConfigError) as error:
        Plan(config)
    assert error.value.key == key


def test_bad_run_config_key_names_the_job():
    config = study_config("test.yaml")
    config["defaults"]["federation.rouns"] = 2
    with pytest.raises(FedBTError, match=r"job results/runs/pretrain/cs/fedavg/seed0: config key 'federation.rouns'"):
        Plan(config)


def test_values_round_trip_through_set_flags():
    assert yaml_value(5e-5) == "5.0e-05" and yaml_value([0, 1]) == "[0, 1]" and yaml_value({}) == "{}"
    items = as_sets([{"local.lr": 5e-5, "method.options": {"local_layers": 2}}, {"local.lr": 1e-3}])
    assert load_config(None, items).local.lr == 1e-3
    assert set_flags(["name=a b"]) == "--set 'name=a b'"


def test_job_environment_puts_this_fedbt_first_and_claims_gpus_only_when_capped():
    assert job_environment("/venv/bin", 0, "/usr/bin") == {
        "PATH": "/venv/bin:/usr/bin",
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
    }
    assert job_environment("/venv/bin", 4, "/usr/bin")["FEDBT_GPUS"] == "4"


def test_report_captions_by_kind(default_plan):
    outputs = default_plan.report_outputs()
    captions = dict((p, (c, s)) for p, c, s in default_plan.report_captions(outputs["tables"] + outputs["figures"]))
    assert captions["results/tables/pretrain.md"][0] == "table.rst"
    assert captions["results/figures/pretrain_pareto.png"] == (
        "pareto.rst",
        "Table 1: further pre-training (CS corpus, held-out MLM loss), learning rate per method chosen on dev",
    )
    assert captions["results/figures/layer_schedule.png"] == ("layer_schedule.rst", "Method")


def grid_config() -> dict:
    config = study_config("test.yaml")
    config["studies"]["finetune"]["lr_grid"] = [1.0e-4, 3.0e-4]
    config["studies"]["finetune"]["seeds"] = [0, 1]
    return config


def test_an_lr_grid_runs_every_job_once_per_learning_rate():
    plan = Plan(grid_config())
    grid_jobs = [job for job in plan.jobs.values() if job.point]
    assert len(grid_jobs) == 2 * 2 * 2  # variants x seeds x learning rates
    job = plan.job("finetune", "rct", "fedbt-ft-lr0.0003", 1)
    assert (job.variant, job.point, job.seed) == ("fedbt-ft", (("local.lr", 3.0e-4),), 1)
    config = load_config(None, plan.job_sets(job))
    assert config.local.lr == 3.0e-4 and config.name == "rct-fedbt-ft-lr0.0003-seed1"
    assert config.tracking.tags["grid"] == "lr0.0003" and config.tracking.tags["variant"] == "fedbt-ft"
    assert all(not job.point for job in plan.jobs.values() if job.scenario == "pretrain")


def test_an_lr_grid_gives_the_report_every_candidate():
    plan = Plan(grid_config())
    table = next(t for t in plan.report_spec()["tables"] if t["name"] == "finetune")
    row = next(r for r in table["rows"] if r["variant"] == "fedavg")
    assert sorted(row["lr_runs"]) == ["lr0.0001", "lr0.0003"]
    assert row["lr_runs"]["lr0.0003"]["rct"] == [
        plan.layout.run_metrics("finetune", "rct", "fedavg-lr0.0003", s) for s in (0, 1)
    ]
    assert set(plan.metrics_files()) >= {f"{d}/metrics.json" for d in plan.jobs}


def test_a_bad_lr_grid_names_the_key():
    config = grid_config()
    config["studies"]["finetune"]["lr_grid"] = [1e-4, 1e-4]
    with pytest.raises(ConfigError, match="distinct") as error:
        Plan(config)
    assert error.value.key == "studies.finetune.lr_grid"


def pretrain_grid_config() -> dict:
    """test.yaml with a pre-training lr_grid, a dev slice, an untuned row and fedbt's own grid over its depth."""
    config = study_config("test.yaml")
    config["scenarios"]["pretrain"]["data.dev_examples"] = 8
    config["variants"]["none"] = {"tuned": False}
    config["variants"]["fedbt"]["grid"] = {"method.options.local_layers": [1, 2], "local.weight_decay": [0.0, 0.01]}
    config["studies"]["pretrain"] |= {"variants": ["none", "fedavg", "fedbt"], "lr_grid": [1e-4, 3e-4]}
    return config


def test_a_variant_grid_plans_the_product_with_the_lr_grid_named_by_the_point():
    plan = Plan(pretrain_grid_config())
    labels = sorted(job.label for job in plan.jobs.values() if job.study == "pretrain")
    points = [f"lr{lr}-local_layers{k}-weight_decay{wd}" for lr in (0.0001, 0.0003) for k in (1, 2) for wd in (0, 0.01)]
    assert labels == sorted(["none", "fedavg-lr0.0001", "fedavg-lr0.0003"] + [f"fedbt-{p}" for p in points])
    job = plan.job("pretrain", "cs", "fedbt-lr0.0003-local_layers1-weight_decay0.01", 0)
    config = load_config(None, plan.job_sets(job))
    assert (config.local.lr, config.method.options, config.local.weight_decay) == (3e-4, {"local_layers": 1}, 0.01)
    assert config.data.dev_examples == 8 and config.tracking.tags["grid"] == "lr0.0003-local_layers1-weight_decay0.01"
    assert config.name == "cs-fedbt-lr0.0003-local_layers1-weight_decay0.01-seed0"
    shared = sorted(job.label for job in plan.jobs.values() if job.study == "shared")  # no lr_grid: fedbt's own
    assert shared == [f"fedbt-local_layers{k}-weight_decay{wd}" for k in (1, 2) for wd in (0, 0.01)]


def test_the_report_spec_carries_every_grid_point_and_why_a_row_is_untuned():
    plan = Plan(pretrain_grid_config())
    table = next(t for t in plan.report_spec()["tables"] if t["name"] == "pretrain")
    rows = {row["variant"]: row for row in table["rows"]}
    assert "lr_runs" not in rows["none"] and "tuned is false" in rows["none"]["not_tuned"]
    assert rows["none"]["runs"]["cs"] == [plan.layout.run_metrics("pretrain", "cs", "none", 0)]
    assert sorted(rows["fedavg"]["lr_runs"]) == ["lr0.0001", "lr0.0003"] and "not_tuned" not in rows["fedavg"]
    assert len(rows["fedbt"]["lr_runs"]) == 8
    assert rows["fedbt"]["lr_runs"]["lr0.0001-local_layers2-weight_decay0"]["cs"] == [
        plan.layout.run_metrics("pretrain", "cs", "fedbt-lr0.0001-local_layers2-weight_decay0", 0)
    ]


def lr_from_config() -> dict:
    """test.yaml's pretrain study with an lr_grid and fedbt's own grid, and a study ``again`` on the same data that
    runs each method once, at the point the pretrain study chooses for it on dev."""
    config = pretrain_grid_config()
    config["variants"]["fedbt"]["grid"] = {"method.options.local_layers": [1, 2]}
    config["studies"]["pretrain"]["seeds"] = [0, 1]
    config["studies"]["again"] = {
        "scenario": "pretrain",
        "title": "Again, at the pretrain study's choice",
        "data": ["cs"],
        "variants": ["none", "fedavg", "fedbt"],
        "seeds": [5],
        "lr_from": "pretrain",
    }
    return config


def test_an_lr_from_study_runs_each_method_once_choosing_from_the_other_studys_runs():
    plan = Plan(lr_from_config())
    jobs = {job.label: job for job in plan.jobs.values() if job.study == "again"}
    assert sorted(jobs) == ["fedavg-tuned-in-pretrain", "fedbt-tuned-in-pretrain", "none"]  # none: untuned
    job = jobs["fedbt-tuned-in-pretrain"]
    assert (job.point, job.tuned_in, job.seed) == ((), "pretrain", 5)
    candidates = plan.choice_candidates(job)
    assert candidates["study"] == "pretrain"
    assert sorted(candidates["points"]) == [f"lr{lr}-local_layers{k}" for lr in (0.0001, 0.0003) for k in (1, 2)]
    point = candidates["points"]["lr0.0003-local_layers2"]
    assert point["sets"] == ["local.lr=0.0003", "method.options.local_layers=2"]
    label = "fedbt-lr0.0003-local_layers2"
    assert point["runs"] == [plan.layout.run_metrics("pretrain", "cs", label, seed) for seed in (0, 1)]
    assert set(plan.run_inputs(job)) >= {run for p in candidates["points"].values() for run in p["runs"]}
    assert plan.choose_flag(job).startswith("--choose-from '{") and plan.choose_flag(jobs["none"]) == ""
    assert load_config(None, plan.job_sets(job)).name == "cs-fedbt-tuned-in-pretrain-seed5"


def test_an_lr_from_study_gives_the_report_the_study_and_data_its_choice_comes_from():
    table = next(t for t in Plan(lr_from_config()).report_spec()["tables"] if t["name"] == "again")
    rows = {row["variant"]: row for row in table["rows"]}
    assert rows["fedbt"]["tuned_in"] == {"study": "pretrain", "data": {"cs": "cs"}}
    assert "lr_runs" not in rows["fedbt"] and "not_tuned" not in rows["fedbt"]
    assert "tuned_in" not in rows["none"] and "tuned is false" in rows["none"]["not_tuned"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["studies"]["again"].update(lr_from="pretrian"), "unknown study 'pretrian'; allowed: pretrain"),
        (lambda c: c["studies"]["again"].update(lr_grid=[1e-3]), "not both"),
        (lambda c: c["studies"]["again"].update(lr_from="shared"), "does not choose a grid point for 'fedavg'"),
        (lambda c: c["studies"]["again"].update(lr_from="finetune"), "is a finetune study"),
        (lambda c: c["studies"].update(third=c["studies"]["again"] | {"lr_from": "again"}), "takes its own choice"),
    ],
)
def test_a_bad_lr_from_fails_at_planning_naming_the_key(change, message):
    config = lr_from_config()
    change(config)
    with pytest.raises(ConfigError, match=message) as error:
        Plan(config)
    assert error.value.key.endswith(".lr_from")


def test_study_scopes_follow_variant_grids():
    assert_scopes_hold_their_tables(Plan(pretrain_grid_config()))


def test_short_names_of_a_point_stay_apart_where_keys_end_alike():
    assert point_label((("local.lr", 3e-4),)) == "lr0.0003", "today's labels of lr-only grids"
    assert point_label((("local.lr", 5e-5), ("server.lr", 1.0))) == "lr5e-05-server_lr1"
    assert point_label((("method.options.mu", 0.01), ("server.optimizer", "adam"))) == "mu0.01-optimizeradam"


@pytest.mark.parametrize(
    ("grid", "key", "message"),
    [
        ({"federation.rouns": [1, 2]}, "variants.fedbt.grid.federation.rouns", "unknown key"),
        ({"method.options.muu": [0.1]}, "variants.fedbt.grid.method.options.muu", "method fedbt: unknown key"),
        ({"method.options.local_layers": []}, "variants.fedbt.grid.method.options.local_layers", "non-empty"),
        ({"local.weight_decay": [0.1, 0.1]}, "variants.fedbt.grid.local.weight_decay", "distinct"),
        ({"local.lr": [0.1, 0.2]}, "variants.fedbt.grid.local.lr", "lr_grid sets the learning rate"),
        ({"seed": [0, 1]}, "variants.fedbt.grid.seed", "the pipeline sets this key"),
    ],
)
def test_a_bad_variant_grid_fails_at_planning_naming_the_key(grid, key, message):
    config = pretrain_grid_config()
    config["variants"]["fedbt"]["grid"] = grid
    with pytest.raises(ConfigError, match=message) as error:
        Plan(config)
    assert error.value.key == key


def test_jobs_reading_the_same_data_share_one_tokenize_job(default_plan):
    stamps = {}
    for job in default_plan.jobs.values():
        stamps.setdefault(default_plan.token_stamp(job), set()).add((job.scenario, job.data))
    assert all(len(readers) == 1 for readers in stamps.values()), "one cache per data set (and model, length)"
    assert {data for readers in stamps.values() for _, data in readers} == set(default_plan.config["data"])
    assert set(default_plan.token_jobs()) == set(stamps)
    sets = default_plan.token_jobs()[default_plan.token_stamp(default_plan.job("pretrain", "cs", "fedbt-lr0.0003", 0))]
    config = load_config(None, sets)
    assert config.data.corpus == "cs" and config.model.source == "minilm", "the starting model's base tokenizer"
    assert config.data.cache_dir == "results/cache"


def test_image_jobs_need_no_token_cache():
    plan = Plan(study_config("test-vision.yaml"))
    assert all(plan.token_stamp(job) is None for job in plan.jobs.values())


def test_the_default_study_scores_every_row_with_spread(default_plan):
    """Issues 12 and 20: every study runs >= 3 federation seeds (n for every p-value); pre-training is scored by its
    held-out loss on a test slice, its learning rate chosen on a separate dev slice (no downstream fine-tuning that
    cannot move at this scale); every table chooses each method's learning rate on dev, Table 3 with fedbt-ft's
    control; `none` trains nothing and runs once."""
    studies = default_plan.config["studies"]
    assert all(len(spec["seeds"]) >= 3 and len(spec["lr_grid"]) >= 2 for spec in studies.values())
    for job in default_plan.jobs.values():
        config = load_config(None, default_plan.job_sets(job))
        if job.scenario == "pretrain":
            assert config.evaluation.task is None and config.data.heldout_examples > 0
            assert config.data.dev_examples > 0
    assert "freeze-bottom-top3" in studies["finetune"]["variants"]
    pretrain = next(t for t in default_plan.report_spec()["tables"] if t["name"] == "pretrain")
    rows = {row["variant"]: row for row in pretrain["rows"]}
    assert "lr_runs" not in rows["none"] and all("lr_runs" in row for v, row in rows.items() if v != "none")


def test_the_estimate_counts_every_grid_job_under_its_run_label():
    from fedbt.estimate import study_jobs

    config = pretrain_grid_config()
    plan = Plan(config)
    estimated = [(study, data, label, seed) for study, data, label, seed, _ in study_jobs(config)]
    assert sorted(estimated) == sorted((j.study, j.data, j.label, j.seed) for j in plan.jobs.values())
    job = next(run for *_, run in study_jobs(config) if run.local.lr == 3e-4 and run.method.options)
    assert job.method.options["local_layers"] in (1, 2) and job.data.dev_examples == 8
