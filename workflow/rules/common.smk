# Planning helpers: expand the study config into jobs (one `fedbt run` each) and the report specification.
# Pure bookkeeping, no training logic. A job is identified by (scenario, data, variant, seed); it belongs to
# the first study that lists it, and every study whose table needs it reads the same run.

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from fedbt.config import load_config
from fedbt.errors import ConfigError

RESULTS = config.get("results", "results")
BASE_CONFIG = str(Path(workflow.basedir) / "workflow" / "base" / "run.yaml")
_venv_fedbt = Path(sys.executable).parent / "fedbt"
FEDBT = str(_venv_fedbt) if _venv_fedbt.exists() else "fedbt"


TRACKING = config.get("tracking", {})
TRACKING_ON = TRACKING.get("enabled", True)
TRACKING_URI = TRACKING.get("uri") or f"sqlite:///{RESULTS}/mlflow.db"



def _gpu_count() -> int:
    """The `--resources gpu=N` limit of this invocation (0 when not given)."""
    resources = workflow.global_resources
    value = getattr(resources["gpu"], "value", resources["gpu"]) if "gpu" in resources else 0
    return int(value) if isinstance(value, int) else 0


GPUS = _gpu_count()
# FEDBT_GPUS makes each job claim a free GPU slot (fedbt/gpu.py) before torch starts.
GPU_ENV = f"FEDBT_GPUS={GPUS}" if GPUS else ""


def _fail(key: str, message: str):
    raise WorkflowError(f"config key '{key}': {message}")


def yaml_value(value) -> str:
    """A value as one-line YAML that `fedbt run --set` parses back to the same value (5.0e-05, [0, 1], {})."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


@dataclass(frozen=True)
class Job:
    study: str
    scenario: str
    data: str
    variant: str
    seed: int

    @property
    def run_dir(self) -> str:
        return f"{RESULTS}/runs/{self.study}/{self.data}/{self.variant}/seed{self.seed}"

    @property
    def metrics(self) -> str:
        return f"{self.run_dir}/metrics.json"


def variant_spec(name: str, key: str) -> dict:
    if name not in config["variants"]:
        _fail(key, f"unknown variant {name!r}; defined variants: {', '.join(config['variants'])}")
    spec = config["variants"][name] or {}
    student = spec.get("student")
    if student is not None and student not in config.get("students", {}):
        _fail(f"variants.{name}.student", f"unknown student {student!r}; defined: {', '.join(config.get('students', {}))}")
    return spec


def student_flag(name: str) -> str:
    return f"{RESULTS}/runs/_students/{name}/distill_costs.json"


def student_flags(name: str) -> str:
    """`fedbt distill` flags of student `name`; `start:` makes a starting model its teacher."""
    spec = dict(config["students"][name])
    start = spec.pop("start", None)
    if start is not None:
        if start not in config.get("starting_models", {}):
            _fail(f"students.{name}.start", f"unknown starting model {start!r}; defined: {', '.join(config.get('starting_models', {}))}")
        spec["teacher"] = str(Path(start_metrics(start)).parent / "model")
    return " ".join(f"--{k} {shlex.quote(str(v))}" for k, v in spec.items())


def student_inputs(name: str) -> list[str]:
    """The starting model a student's teacher is, if any."""
    start = config["students"][name].get("start")
    return [start_metrics(start)] if start else []


def start_metrics(name: str) -> str:
    """The metrics.json of starting model `name` (its model is in model/ next to it)."""
    return f"{RESULTS}/runs/_start/{name}/metrics.json"


def start_of(data: str) -> str | None:
    """The starting model a data set's jobs begin from (None: the configured model.source)."""
    name = config["data"][data].get("start")
    if name is not None and name not in config.get("starting_models", {}):
        _fail(f"data.{data}.start", f"unknown starting model {name!r}; defined: {', '.join(config.get('starting_models', {}))}")
    return name


def as_sets(layers: list[dict]) -> list[str]:
    """Override layers (later ones win) as `key=value` items for `fedbt run --set`."""
    return [f"{key}={yaml_value(value)}" for layer in layers for key, value in layer.items()]


def set_flags(items: list[str]) -> str:
    """`--set` flags for a shell command line, each item quoted."""
    return " ".join(f"--set {shlex.quote(item)}" for item in items)


def data_layer() -> dict:
    """Where every run reads the data and keeps its partitions."""
    return {"data.data_dir": config.get("data_dir", "data"), "data.partition_dir": f"{RESULTS}/partitions"}


def start_overrides(name: str) -> list[str]:
    """The `--set`s of the centralised run that builds starting model `name`."""
    return as_sets(
        [
            data_layer(),
            config["starting_models"][name]["overrides"],
            {"name": name, "study": "_start", "tracking.enabled": TRACKING_ON, "tracking.uri": TRACKING_URI},
        ]
    )


def job_overrides(job: Job) -> list[str]:
    """Every `--set` of a job, in order: defaults, scenario, data set, variant, identity."""
    spec = variant_spec(job.variant, f"variants.{job.variant}")
    options = dict(spec.get("options") or {})
    if spec.get("student"):
        options["student"] = str(Path(student_flag(spec["student"])).parent)
    start = start_of(job.data)
    starting = {"model.source": str(Path(start_metrics(start)).parent / "model")} if start else {}
    layers = [
        data_layer(),
        config.get("defaults") or {},
        config.get("scenarios", {}).get(job.scenario) or {},
        config["data"][job.data].get("overrides") or {},
        starting,
        spec.get("overrides") or {},
        {
            "scenario": job.scenario,
            "method.name": spec.get("method", job.variant),
            "method.options": options,
            "seed": job.seed,
            "name": f"{job.data}-{job.variant}-seed{job.seed}",
            "study": job.study,
            "tracking.enabled": TRACKING_ON,
            "tracking.uri": TRACKING_URI,
        },
    ]
    return as_sets(layers)


def plan_jobs() -> dict[str, Job]:
    """All jobs by run directory, each validated by fedbt's config loader (a bad key fails here, named)."""
    jobs, owner = {}, {}
    for study, spec in config["studies"].items():
        for i, data in enumerate(spec["data"]):
            if data not in config["data"]:
                _fail(f"studies.{study}.data[{i}]", f"unknown data set {data!r}; defined: {', '.join(config['data'])}")
            if config["data"][data]["scenario"] != spec["scenario"]:
                _fail(f"studies.{study}.data[{i}]", f"{data!r} is a {config['data'][data]['scenario']} data set")
            for j, variant in enumerate(spec["variants"]):
                variant_spec(variant, f"studies.{study}.variants[{j}]")
                for seed in spec["seeds"]:
                    identity = (spec["scenario"], data, variant, seed)
                    job = Job(owner.setdefault(identity, study), *identity)
                    jobs[job.run_dir] = job
        if spec.get("reference", "fedavg") not in spec["variants"]:
            _fail(f"studies.{study}.reference", f"{spec.get('reference', 'fedavg')!r} is not among its variants")
    for job in jobs.values():
        try:
            load_config(BASE_CONFIG, job_overrides(job))
        except ConfigError as error:
            raise WorkflowError(f"job {job.run_dir}: {error}") from None
    for name in config.get("starting_models", {}):
        try:
            load_config(BASE_CONFIG, start_overrides(name))
        except ConfigError as error:
            raise WorkflowError(f"starting model {name}: {error}") from None
    return jobs


JOBS = plan_jobs()
STUDY_OF_IDENTITY = {(j.scenario, j.data, j.variant, j.seed): j for j in JOBS.values()}


def report_spec() -> dict:
    """The tables (one per study) with the runs of every cell, for `fedbt report --spec`."""
    tables = []
    for study, spec in config["studies"].items():
        rows = []
        for variant in spec["variants"]:
            vspec = variant_spec(variant, f"variants.{variant}")
            method = vspec.get("method", variant)
            bert_base = vspec.get("bert_base", {"method": method, "options": {}})
            if bert_base is not None:
                bert_base = {"method": method, "options": {}, **bert_base}
            runs = {
                data: [STUDY_OF_IDENTITY[(spec["scenario"], data, variant, s)].metrics for s in spec["seeds"]]
                for data in spec["data"]
            }
            rows.append(
                {
                    "variant": variant,
                    "method": method,
                    "options": vspec.get("options") or {},
                    "runs": runs,
                    "paper_row": (vspec.get("paper") or {}).get(spec.get("paper")),
                    "bert_base": bert_base,
                }
            )
        columns = [{"data": d, "label": config["data"][d]["task"]} for d in spec["data"]]
        tables.append(
            {
                "name": study,
                "title": spec["title"],
                "scenario": spec["scenario"],
                "paper": spec.get("paper"),
                "reference": spec.get("reference", "fedavg"),
                "base_arch": spec.get("base_arch", "bert-base-uncased"),
                "base_tiers": spec.get("base_tiers"),
                "columns": columns,
                "rows": rows,
            }
        )
    return {"tables": tables}
