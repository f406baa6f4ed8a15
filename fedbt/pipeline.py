"""Planning of the Snakemake pipeline: a study config (``config/*.yaml``) -> the jobs, each one ``fedbt run``
with its ``--set`` overrides, the starting models and distilled students they need, the studies that read each
job (for MLflow) and the report specification. Bookkeeping only, no Snakemake and no training: the rules in
``workflow/rules/`` call this module and stay thin.

A job is identified by (scenario, data set, variant, seed, grid point, ``lr_from`` study). A study's ``lr_grid``
(``local.lr``) times a variant's ``grid`` (any run-config override key -> candidate values) is the product of points
its jobs run at, one job each, named by the point (``fedavg-lr0.0003``, ``fedprox-lr0.0003-mu0.01``); every seed
runs every point, and the report chooses one per row and data set on the mean dev score over the seeds
(:mod:`fedbt.report.selection`); a study with ``lr_from: <study>`` runs no grid, each of its jobs waiting for that
study's runs of its variant and starting at the point they chose (:meth:`Plan.tuned_in`). A job runs once, in the
directory of the first study that lists it (:meth:`Layout.run_dir`), and every study whose table needs it reads that
run. Every job's run config is loaded by fedbt's own config loader while planning, so a bad key fails before any job
starts, named (``job results/runs/...: config key 'federation.rouns': unknown key; ...``), and its method is built
with its options on a weight-free model (:func:`check_method`), so a bad option fails too, named where the study
config sets it (``config key 'variants.fedbt.options.bogus': method fedbt: unknown key; allowed keys here: ...``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedbt.config import ModelConfig, RunConfig, load_config
from fedbt.errors import ConfigError, FedBTError
from fedbt.report.spec import TIER_SUFFIX, output_files


@dataclass(frozen=True)
class Layout:
    """Where the pipeline writes, under the ``results`` root: the one place that spells the paths."""

    results: str = "results"

    def run_dir(self, study: str, data: str, variant: str, seed: int | str) -> str:
        """A job's run directory (works with Snakemake wildcards: ``run_dir("{study}", ...)``)."""
        return f"{self.results}/runs/{study}/{data}/{variant}/seed{seed}"

    def run_metrics(self, study: str, data: str, variant: str, seed: int | str) -> str:
        """A job's output: its run directory's ``metrics.json``."""
        return f"{self.run_dir(study, data, variant, seed)}/metrics.json"

    def run_log(self, study: str, data: str, variant: str, seed: int | str) -> str:
        return f"{self.run_dir(study, data, variant, seed)}.log"

    def student_dir(self, name: str) -> str:
        """A distilled student's checkpoint directory (``method.options.student`` of the distill variant)."""
        return f"{self.results}/runs/_students/{name}"

    def student_flag(self, name: str) -> str:
        """The file that marks a student as built (its costs)."""
        return f"{self.student_dir(name)}/distill_costs.json"

    def student_log(self, name: str) -> str:
        return f"{self.student_dir(name)}.log"

    def start_dir(self, name: str) -> str:
        """A starting model's run directory; its ``model/`` is the ``model.source`` of the data sets naming it."""
        return f"{self.results}/runs/_start/{name}"

    def start_metrics(self, name: str) -> str:
        return f"{self.start_dir(name)}/metrics.json"

    def start_log(self, name: str) -> str:
        return f"{self.start_dir(name)}.log"

    @property
    def partitions(self) -> str:
        return f"{self.results}/partitions"

    @property
    def token_cache(self) -> str:
        """The token caches every job of the study memory-maps (:mod:`fedbt.data.tokens`)."""
        return f"{self.results}/cache"

    def token_stamp(self, digest: str) -> str:
        """The output of the ``tokenize`` job that builds one data set's caches (their folders, as JSON)."""
        return f"{self.token_cache}/stamps/{digest}.json"

    def token_log(self, digest: str) -> str:
        return f"{self.token_cache}/stamps/{digest}.log"

    @property
    def report_log(self) -> str:
        return f"{self.results}/runs/.report.log"

    @property
    def mlflow_uri(self) -> str:
        """The default MLflow store: ``sqlite:///<results>/mlflow.db``."""
        return f"sqlite:///{self.results}/mlflow.db"


Point = tuple[tuple[str, Any], ...]
"""A grid point: (override key, value) pairs, ``local.lr`` (the study's ``lr_grid``) first, then the variant's
``grid`` keys in their order; ``()`` for a job without a grid."""

PIPELINE_KEYS = ("scenario", "seed", "name", "study", "method.name", "method.options", "tracking.", "data.data_dir")
"""Run-config keys the pipeline sets per job, which a grid may not vary (``method.options.<option>`` may)."""

LABEL_VALUE = re.compile(r"[A-Za-z0-9._+]+")


def label_value(value: Any) -> str:
    """A grid value as a run label spells it: ``0.0003``, ``5e-05``, ``true``, ``adam``."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def point_label(point: Point) -> str:
    """How a grid point names its runs: each key's short name and value, joined by ``-`` (``lr0.0003``,
    ``lr0.0003-mu0.01``). The short name is the key's last part (``local.lr`` is always ``lr``), or the whole key
    with ``_`` for ``.`` where two keys of the point end alike (``server_lr`` beside ``lr``)."""
    lasts = [key.rsplit(".", 1)[-1] for key, _ in point]
    parts = []
    for (key, value), last in zip(point, lasts, strict=True):
        name = "lr" if key == "local.lr" else last if lasts.count(last) == 1 else key.replace(".", "_")
        parts.append(f"{name}{label_value(value)}")
    return "-".join(parts)


def study_lr_grid(config: dict[str, Any], study: str) -> list[float]:
    """A study's ``lr_grid`` (empty without one): distinct learning rates > 0."""
    grid = config["studies"][study].get("lr_grid")
    if grid is None:
        return []
    if not grid or len(set(grid)) != len(grid) or any(lr <= 0 for lr in grid):
        raise ConfigError(f"studies.{study}.lr_grid", f"got {grid}, expected distinct learning rates > 0")
    return [float(lr) for lr in grid]


def variant_grid(config: dict[str, Any], variant: str) -> dict[str, list[Any]]:
    """A variant's ``grid`` (override key -> candidate values), checked: every list non-empty, its values distinct
    as labels spell them; no key the pipeline sets per job. (Whether a key is a run-config key, or an option of
    the variant's method, is checked with each job's config and method: :meth:`Plan._validate_run_configs`.)"""
    grid = (config["variants"][variant] or {}).get("grid") or {}
    for key, values in grid.items():
        where = f"variants.{variant}.grid.{key}"
        if key.startswith(PIPELINE_KEYS) and not key.startswith("method.options."):
            raise ConfigError(where, "the pipeline sets this key per job; a grid varies other override keys")
        if not isinstance(values, list) or not values:
            raise ConfigError(where, f"got {values!r}, expected a non-empty list of candidate values")
        labels = [label_value(value) for value in values]
        if len(set(labels)) != len(labels):
            raise ConfigError(where, f"got {values}, expected distinct values (as run labels spell them)")
        bad = [label for label in labels if not LABEL_VALUE.fullmatch(label)]
        if bad:
            raise ConfigError(where, f"{bad[0]!r} cannot name a run; values are numbers, booleans or A-Za-z0-9._+")
    return grid


def grid_points(config: dict[str, Any], study: str, variant: str) -> list[Point]:
    """The points a variant's jobs run at in a study: the product of the study's ``lr_grid`` and the variant's
    ``grid``; ``[()]`` (one job at the configured settings) without either, or for a variant with ``tuned:
    false``."""
    spec = config["variants"][variant] or {}
    grid = variant_grid(config, variant)
    if not spec.get("tuned", True):
        if grid:
            raise ConfigError(f"variants.{variant}.grid", "a variant with tuned: false runs untuned, without a grid")
        return [()]
    if config["studies"][study].get("lr_from") is not None:  # its jobs take the other study's choice
        return [()]
    lrs = study_lr_grid(config, study)
    if lrs and "local.lr" in grid:
        raise ConfigError(f"variants.{variant}.grid.local.lr", f"studies.{study}.lr_grid sets the learning rate")
    axes = ({"local.lr": lrs} if lrs else {}) | grid
    return [tuple(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def lr_source(config: dict[str, Any], study: str, variant: str) -> str | None:
    """The study whose dev choice a variant's jobs in ``study`` run at (``studies.<study>.lr_from``; None without
    one, or for a variant with ``tuned: false``); checked by :meth:`Plan.tuned_in`."""
    if not (config["variants"][variant] or {}).get("tuned", True):
        return None
    return config["studies"][study].get("lr_from")


TOKEN_KEYS = (
    "scenario",
    "model.",
    "data.corpus",
    "data.task",
    "data.data_dir",
    "data.cache_dir",
    "evaluation.task",
    "local.objective",
    "sources",
    "plugins",
)
"""The run-config overrides that decide what a job reads, hence which token caches it needs."""


@dataclass(frozen=True)
class Job:
    """One ``fedbt run`` of the pipeline: ``study`` is the first study listing it (its run directory's); ``point``
    is its grid point (:func:`grid_points`; ``()`` without a grid); ``tuned_in`` the study whose grid point it runs
    at, chosen when it starts (a study with ``lr_from``; :meth:`Plan.tuned_in`)."""

    study: str
    scenario: str
    data: str
    variant: str
    seed: int
    point: Point = ()
    tuned_in: str | None = None

    @property
    def identity(self) -> tuple[str, str, str, int, Point, str | None]:
        return (self.scenario, self.data, self.variant, self.seed, self.point, self.tuned_in)

    @property
    def label(self) -> str:
        """The variant folder of its run directory: the variant, with ``-<point label>`` for a grid job and
        ``-tuned-in-<study>`` for a job of an ``lr_from`` study."""
        if self.tuned_in:
            return f"{self.variant}-tuned-in-{self.tuned_in}"
        return f"{self.variant}-{point_label(self.point)}" if self.point else self.variant


def yaml_value(value: Any) -> str:
    """A value as one-line YAML that ``fedbt run --set`` parses back to the same value (5.0e-05, [0, 1], {})."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


def as_sets(layers: list[dict[str, Any]]) -> list[str]:
    """Override layers (later ones win) as ``key=value`` items for ``fedbt run --set``."""
    return [f"{key}={yaml_value(value)}" for layer in layers for key, value in layer.items()]


def set_flags(items: list[str]) -> str:
    """``--set`` flags for a shell command line, each item quoted."""
    return " ".join(f"--set {shlex.quote(item)}" for item in items)


def tier_sets(sets: list[str]) -> bool:
    """Whether the last ``federation.tiers`` of a job's ``--set`` s names some tier."""
    tiers = [s.split("=", 1)[1] for s in sets if s.startswith("federation.tiers=")]
    return bool(tiers) and tiers[-1].strip() not in ("[]", "null", "None", "")


def privacy_sets(sets: list[str]) -> bool:
    """Whether a job's ``--set`` s give it ``privacy`` (a ``privacy.<key>`` after the last ``privacy=null``)."""
    last_null = max((i for i, s in enumerate(sets) if s.split("=", 1)[0] == "privacy"), default=-1)
    whole = sets[last_null].split("=", 1)[1].strip() if last_null >= 0 else "null"
    keys = [s for s in sets[last_null + 1 :] if s.startswith("privacy.")]
    return bool(keys) or whole not in ("null", "None", "", "{}")


def device_sets(sets: list[str]) -> bool:
    """Whether the last ``federation.tiers`` of a job's ``--set`` s gives its tiers devices."""
    tiers = [s.split("=", 1)[1] for s in sets if s.startswith("federation.tiers=")]
    return bool(tiers) and "device" in tiers[-1]


TARGET_PREFIX = {"pretrain": "heldout_", "finetune": "dev_"}
"""A study's ``target`` names its per-round score: the held-out loss of pre-training, a dev metric of fine-tuning."""


def planning_model_config(model: ModelConfig):
    """The transformers config of a model source where planning knows it without weights, the hub or an earlier
    job (None elsewhere): ``tiny`` and ``scratch:`` sources, inline and shipped shapes, a checkpoint directory."""
    from fedbt.models import ARCH_ALIASES, ARCH_CONFIG_DIR, SCRATCH, arch_config, model_config_for

    source = model.source
    if source == "tiny" or source.startswith(SCRATCH):
        return model_config_for(model)
    shipped = ARCH_CONFIG_DIR / f"{ARCH_ALIASES.get(source, source).replace('/', '__')}.json"
    if "=" in source or shipped.is_file() or (Path(source) / "config.json").is_file():
        return arch_config(source, "model.source")
    return None


def check_method(config: RunConfig, model: ModelConfig | None) -> None:
    """Build a run's method as ``fedbt run`` does before it loads weights (options parsed strictly, then the
    method's ``validate`` on the run's tiers), on a meta-device model of ``model`` (the run's architecture, as
    far as planning knows it). Where the architecture is unknown at plan time (``model`` None, a hub id that is
    not shipped, a student still to distil), only the options are parsed. Raises :class:`ConfigError`."""
    from fedbt.config import from_dict
    from fedbt.federated.method import create_method, get_method, load_plugins
    from fedbt.federated.tiers import tiers_from_config
    from fedbt.models import is_vision, meta_model
    from fedbt.training.objectives import get_objective

    load_plugins(config.plugins)
    cls, options = get_method(config.method.name), config.method.options
    if model is not None:
        model = dataclasses.replace(model, source=cls.starting_model(options, model.source))
    hf_config = None if model is None else planning_model_config(model)
    objective = get_objective(config.local.objective)
    if hf_config is None or (objective.modality == "image") != is_vision(hf_config):
        from_dict(cls.Options, dict(options), "method.options")  # the run itself reports a modality mismatch
        return
    meta = meta_model(hf_config, objective.name)
    tiers = tiers_from_config(config.federation.tiers, data_dir=config.data.data_dir)
    create_method(config.method.name, meta, config.federation.rounds, config.seed, options, config.scenario, tiers)


# glibc's malloc backs large blocks with transparent huge pages in every job. Without it every training step's
# 47 MB MiniLM embedding gradient is a fresh mmap touched 4 KB page by page: benchmarks/malloc_tunables.py
# measures 26 % of a short run's CPU time in the kernel and 7.3 M page faults, 11 % and 0.3 M with it, and 24 %
# less wall time; the results are identical (it does nothing where transparent huge pages are off or on another
# C library).
MALLOC_TUNABLES = "glibc.malloc.hugetlb=1"


def job_environment(bin_dir: str | Path, gpus: int, path: str) -> dict[str, str]:
    """What the pipeline exports to its jobs: this environment's ``bin`` first on ``PATH`` (so ``fedbt`` is the
    one Snakemake runs with), glibc's malloc on transparent huge pages (:data:`MALLOC_TUNABLES`) and, with
    ``--resources gpu=N``, ``FEDBT_GPUS=N`` (each job claims a free GPU slot, :mod:`fedbt.gpu`)."""
    environment = {"PATH": f"{bin_dir}:{path}", "GLIBC_TUNABLES": MALLOC_TUNABLES}
    if gpus:
        environment["FEDBT_GPUS"] = str(gpus)
    return environment


class Plan:
    """The jobs of a study config (validated by ``workflow/schemas/config.schema.yaml``, defaults filled)."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.layout = Layout(config.get("results", "results"))
        tracking = config.get("tracking") or {}
        self.tracking_on = tracking.get("enabled", True)
        self.tracking_uri = tracking.get("uri") or self.layout.mlflow_uri
        self.experiment_pattern = tracking.get("experiment", "{scenario}")
        self.tracking_layer = {
            "tracking.enabled": self.tracking_on,
            "tracking.uri": self.tracking_uri,
            "tracking.log_model": tracking.get("log_model", False),
            "tracking.system_metrics": tracking.get("system_metrics", False),
        }
        self.jobs = self._plan_jobs()
        self._by_identity = {job.identity: job for job in self.jobs.values()}
        self._matched: dict[tuple, dict[str, float]] = {}
        self._checked_methods: set[str] = set()
        self._validate_run_configs()
        for study in config["studies"]:
            self._check_target(study)

    # ------------------------------------------------------------------------------ checks

    def variant(self, name: str, key: str) -> dict[str, Any]:
        """The spec of variant ``name`` (``key``: where it was named, for the error)."""
        variants, students = self.config["variants"], self.config.get("students") or {}
        if name not in variants:
            raise ConfigError(key, f"unknown variant {name!r}; defined variants: {', '.join(variants)}")
        spec = variants[name] or {}
        student = spec.get("student")
        if student is not None and student not in students:
            raise ConfigError(
                f"variants.{name}.student", f"unknown student {student!r}; defined: {', '.join(students)}"
            )
        return spec

    def _check_target(self, study: str) -> None:
        """A study's ``target`` names its per-round score (or ``within_pct``) and its runs have devices to time."""
        spec = self.config["studies"][study]
        target = spec.get("target")
        if not target:
            return
        key = f"studies.{study}.target"
        if not self.timed(study):
            raise ConfigError(
                key, "time to a target needs devices: give the study's tiers one (federation.tiers[].device)"
            )
        name, prefix = next(iter(target)), TARGET_PREFIX[spec["scenario"]]
        if name != "within_pct" and not name.startswith(prefix):
            raise ConfigError(
                f"{key}.{name}",
                f"unknown score; allowed: within_pct, or the {spec['scenario']} per-round score {prefix}<metric> "
                f"(e.g. {'heldout_mlm_loss' if prefix == 'heldout_' else 'dev_accuracy'})",
            )

    def start_of(self, data: str) -> str | None:
        """The starting model a data set's jobs begin from (None: the configured ``model.source``)."""
        name = self.config["data"][data].get("start")
        starts = self.config.get("starting_models") or {}
        if name is not None and name not in starts:
            raise ConfigError(f"data.{data}.start", f"unknown starting model {name!r}; defined: {', '.join(starts)}")
        return name

    def _plan_jobs(self) -> dict[str, Job]:
        jobs, owner = {}, {}
        data_sets = self.config["data"]
        for study, spec in self.config["studies"].items():
            for i, data in enumerate(spec["data"]):
                key = f"studies.{study}.data[{i}]"
                if data not in data_sets:
                    raise ConfigError(key, f"unknown data set {data!r}; defined: {', '.join(data_sets)}")
                if data_sets[data]["scenario"] != spec["scenario"]:
                    raise ConfigError(key, f"{data!r} is a {data_sets[data]['scenario']} data set")
                self.start_of(data)
                for j, variant in enumerate(spec["variants"]):
                    self.variant(variant, f"studies.{study}.variants[{j}]")
                    tuned_in = self.tuned_in(study, variant)
                    for seed in spec["seeds"]:
                        for point in self.points(study, variant):
                            identity = (spec["scenario"], data, variant, seed, point, tuned_in)
                            job = Job(owner.setdefault(identity, study), *identity)
                            jobs[self.layout.run_dir(job.study, data, job.label, seed)] = job
            for key in ("reference", "second_reference"):
                reference = spec.get(key, "fedavg" if key == "reference" else None)
                if reference is not None and reference not in spec["variants"]:
                    raise ConfigError(f"studies.{study}.{key}", f"{reference!r} is not among its variants")
            for variant in spec["variants"]:
                matched = (self.config["variants"][variant] or {}).get("match_flops")
                if matched is not None and (self.config["variants"].get(matched) or {}).get("match_flops"):
                    raise ConfigError(
                        f"variants.{variant}.match_flops",
                        f"{matched!r} is itself FLOP-matched; name a variant that is not",
                    )
                if matched is not None and matched not in spec["variants"]:
                    raise ConfigError(
                        f"variants.{variant}.match_flops",
                        f"{matched!r} is not among the variants of studies.{study}, which lists {variant!r}; "
                        f"allowed: {', '.join(v for v in spec['variants'] if v != variant)}",
                    )
        return jobs

    def points(self, study: str, variant: str) -> list[Point]:
        """The grid points of a variant's jobs in a study (:func:`grid_points`; the report picks one per data set
        on dev)."""
        self.variant(variant, f"variants.{variant}")
        return grid_points(self.config, study, variant)

    def tuned_in(self, study: str, variant: str) -> str | None:
        """The study (``studies.<study>.lr_from``) whose dev choice of grid point a tuned variant's jobs run at
        (None: the study has no ``lr_from``, or the variant runs untuned), checked: another study, with a grid and
        no ``lr_from`` of its own, of the same scenario, listing the variant with a grid."""
        studies, source = self.config["studies"], lr_source(self.config, study, variant)
        if source is None:
            return None
        key = f"studies.{study}.lr_from"
        others = [s for s in studies if s != study]
        if studies[study].get("lr_grid") is not None:
            raise ConfigError(key, "a study takes its learning rates from lr_grid or from another study, not both")
        if source not in others:
            raise ConfigError(key, f"unknown study {source!r}; allowed: {', '.join(others)}")
        if studies[source].get("lr_from") is not None:
            raise ConfigError(key, f"studies.{source} takes its own choice from another study; name one with a grid")
        if studies[source]["scenario"] != studies[study]["scenario"]:
            raise ConfigError(key, f"studies.{source} is a {studies[source]['scenario']} study")
        if variant not in studies[source]["variants"] or self.points(source, variant) == [()]:
            raise ConfigError(key, f"studies.{source} does not choose a grid point for {variant!r} (listed in {study})")
        return source

    def source_data(self, study: str, data: str) -> str:
        """The data set of ``lr_from``'s study whose choice a data set of ``study`` takes: its only one, or the
        same data set."""
        source = self.config["studies"][study]["lr_from"]
        candidates = self.config["studies"][source]["data"]
        if len(candidates) == 1:
            return candidates[0]
        if data in candidates:
            return data
        raise ConfigError(
            f"studies.{study}.lr_from",
            f"studies.{source} has several data sets and not {data!r}; allowed: a study with one data set, or with "
            f"each of this study's",
        )

    def choice_candidates(self, job: Job) -> dict[str, Any] | None:
        """For a job of an ``lr_from`` study: what ``fedbt run --choose-from`` chooses among, the other study's
        grid points of its variant (each point's ``--set`` s and its runs on the mapped data set); else None."""
        if job.tuned_in is None:
            return None
        source, data = job.tuned_in, self.source_data(job.study, job.data)
        points = {
            point_label(point): {
                "sets": as_sets([dict(point)]),
                "runs": self.cell_runs(source, job.variant, point)[data],
            }
            for point in self.points(source, job.variant)
        }
        return {"study": source, "points": points}

    def choose_flag(self, job: Job) -> str:
        """The ``--choose-from`` flag of a job of an ``lr_from`` study (empty for other jobs)."""
        candidates = self.choice_candidates(job)
        return "" if candidates is None else f"--choose-from {shlex.quote(json.dumps(candidates))}"

    def grid_study(self, study: str) -> bool:
        """Whether some row of the study has a grid (its table then shows each row's chosen point)."""
        return any(self.points(study, variant) != [()] for variant in self.config["studies"][study]["variants"])

    def _validate_run_configs(self) -> None:
        for name in self.config.get("students") or {}:
            self.student_start(name)
        for run_dir, job in self.jobs.items():
            try:
                config = load_config(None, self.job_sets(job))
            except ConfigError as error:
                raise self._grid_error(job, error) or FedBTError(f"job {run_dir}: {error}") from None
            self._check_method(run_dir, job, config)
        for name in self.config.get("starting_models") or {}:
            try:
                load_config(None, self.start_sets(name))
            except ConfigError as error:
                raise FedBTError(f"starting model {name}: {error}") from None

    @staticmethod
    def _grid_error(job: Job, error: ConfigError) -> ConfigError | None:
        """A job's config error as an error of its variant's grid, when a grid key is what it names."""
        key = next((k for k, _ in job.point if k == error.key or k.startswith(f"{error.key}.")), None)
        if key is None or key == "local.lr":
            return None
        return ConfigError(f"variants.{job.variant}.grid.{key}", f"not a run-config override key here: {error}")

    def _check_method(self, run_dir: str, job: Job, config: RunConfig) -> None:
        """Build the job's method with its options, weight-free (:func:`check_method`; once per distinct
        setting), so that a bad option fails here, named where the study config sets it (:meth:`_option_error`)."""
        model, start = config.model, self.start_of(job.data)
        if start is not None:  # a starting model has the architecture of its base source
            base = self.config["starting_models"][start]["overrides"]["model.source"]
            model = dataclasses.replace(model, source=base)
        if self.variant(job.variant, f"variants.{job.variant}").get("student"):
            model = None  # a student the pipeline distils: its architecture is known once it is built
        setting = repr((config.plugins, config.method, model, config.local.objective, config.scenario))
        setting += repr((config.federation.rounds, config.federation.tiers))
        if setting in self._checked_methods:
            return
        try:
            check_method(config, model)
        except ConfigError as error:
            raise self._option_error(job, config, error) or FedBTError(f"job {run_dir}: {error}") from None
        self._checked_methods.add(setting)

    @staticmethod
    def _option_error(job: Job, config: RunConfig, error: ConfigError) -> ConfigError | None:
        """A method's error on ``method.options.<option>`` as an error of the variant's ``grid`` key that sets the
        option, else of the variant's ``options``."""
        if not error.key.startswith("method.options."):
            return None
        key = error.key
        grid = [k for k, _ in job.point if k == key or k.startswith(f"{key}.") or key.startswith(f"{k}.")]
        where = f"grid.{grid[0]}" if grid else f"options.{key.removeprefix('method.options.')}"
        message = str(error).removeprefix(f"config key '{key}': ")
        return ConfigError(f"variants.{job.variant}.{where}", f"method {config.method.name}: {message}")

    # ------------------------------------------------------------------------------ jobs

    def job(self, study: str, data: str, label: str, seed: int | str) -> Job:
        """The job whose run directory these (wildcard) values name (``label``: :attr:`Job.label`)."""
        return self.jobs[self.layout.run_dir(study, data, label, seed)]

    def metrics_files(self) -> list[str]:
        """Every job's output (its run directory's ``metrics.json``): what the report waits for."""
        return [f"{run_dir}/metrics.json" for run_dir in self.jobs]

    def experiment(self, scenario: str) -> str:
        """The MLflow experiment of a scenario's runs (``tracking.experiment``, default ``{scenario}``)."""
        return self.experiment_pattern.format(scenario=scenario)

    def _data_layer(self) -> dict[str, Any]:
        """Where every run reads the data and keeps its partitions and token caches."""
        return {
            "data.data_dir": self.config.get("data_dir", "data"),
            "data.partition_dir": self.layout.partitions,
            "data.cache_dir": self.layout.token_cache,
        }

    def job_sets(self, job: Job, matched: bool = True) -> list[str]:
        """Every ``--set`` of a job, in order: data, defaults, scenario, data set, starting model, variant,
        identity, grid point, tracking and (``matched``) its FLOP-matched budget (:meth:`matched_budget`)."""
        spec = self.variant(job.variant, f"variants.{job.variant}")
        options = dict(spec.get("options") or {})
        if spec.get("student"):
            options["student"] = self.layout.student_dir(spec["student"])
        start = self.start_of(job.data)
        starting = {"model.source": f"{self.layout.start_dir(start)}/model"} if start else {}
        identity = {
            "scenario": job.scenario,
            "method.name": spec.get("method", job.variant),
            "method.options": options,
            "seed": job.seed,
            "name": f"{job.data}-{job.label}-seed{job.seed}",
            "study": job.study,
            "tracking.experiment": self.experiment(job.scenario),
            "tracking.tags": {"variant": job.variant, "data": job.data}
            | ({"grid": point_label(job.point)} if job.point else {}),
        }
        layers = [
            self._data_layer(),
            {"keep_model": self.config.get("keep_models", False)},
            self.config.get("defaults") or {},
            (self.config.get("scenarios") or {}).get(job.scenario) or {},
            self.config["data"][job.data].get("overrides") or {},
            starting,
            spec.get("overrides") or {},
            identity,
            dict(job.point),
            self.tracking_layer,
        ]
        if matched:
            layers.append(self.matched_budget(job))
        return as_sets(layers)

    def matched_budget(self, job: Job) -> dict[str, float]:
        """For a variant with ``match_flops: <reference>``: the local budget (``local.steps`` or ``local.epochs``)
        at which the job's client FLOPs equal those of the reference variant's job of the same study, data set and
        seed (at the reference's first grid point; :mod:`fedbt.matching`); empty for other variants."""
        reference = self.variant(job.variant, f"variants.{job.variant}").get("match_flops")
        if reference is None:
            return {}
        if job.identity not in self._matched:
            from fedbt.matching import matched_budget

            ref_job = self._job_of(job.study, job.data, reference, job.seed, self.points(job.study, reference)[0])
            key = f"variants.{job.variant}.match_flops"
            try:
                match = matched_budget(self.planning_config(ref_job), self.planning_config(job, matched=False), key)
            except ConfigError as error:
                raise FedBTError(
                    f"job {self.layout.run_dir(job.study, job.data, job.label, job.seed)}: {error}"
                ) from None
            self._matched[job.identity] = match.override()
        return self._matched[job.identity]

    def planning_config(self, job: Job, matched: bool = True) -> RunConfig:
        """A job's run config as planning sees it: its starting model replaced by the architecture it has (the
        base source it was built from); without its matched budget when ``matched`` is false."""
        config = load_config(None, self.job_sets(job, matched))
        start = self.start_of(job.data)
        if start is not None:
            base = self.config["starting_models"][start]["overrides"]["model.source"]
            config = dataclasses.replace(config, model=dataclasses.replace(config.model, source=base))
        return config

    def start_sets(self, name: str) -> list[str]:
        """The ``--set`` s of the centralised run that builds starting model ``name``."""
        overrides = self.config["starting_models"][name]["overrides"]
        scenario = overrides.get("scenario", "pretrain")
        identity = {
            "name": name,
            "study": "_start",
            "tracking.experiment": self.experiment(scenario),
            "tracking.tags": {"variant": name, "data": name},
        }
        return as_sets([self._data_layer(), overrides, identity, self.tracking_layer])

    def run_inputs(self, job: Job) -> list[str]:
        """The files a job needs first: its distilled student, its starting model, its token caches and, in an
        ``lr_from`` study, the other study's runs it chooses its grid point from."""
        student = self.variant(job.variant, f"variants.{job.variant}").get("student")
        start = self.start_of(job.data)
        stamp = self.token_stamp(job)
        candidates = self.choice_candidates(job)
        return (
            ([self.layout.student_flag(student)] if student else [])
            + ([self.layout.start_metrics(start)] if start else [])
            + ([stamp] if stamp else [])
            + ([run for point in candidates["points"].values() for run in point["runs"]] if candidates else [])
        )

    # ------------------------------------------------------------------------------ token caches

    def token_sets(self, job: Job) -> list[str] | None:
        """The ``--set`` s of the ``fedbt tokenize`` job a run reads from: the overrides that decide what it reads
        (data, model, objective; not the method, seed or federation). None for image data (not token-cached).

        A job starting from a starting model tokenises with that model's base source: the starting model saves
        its base model's tokenizer."""
        sets = [item for item in self.job_sets(job) if item.startswith(TOKEN_KEYS)]
        from fedbt.training.objectives import get_objective

        objective = next((s.split("=", 1)[1] for s in reversed(sets) if s.startswith("local.objective=")), "mlm")
        if get_objective(objective).modality == "image":  # images are held in memory, not token-cached
            return None
        start = self.start_of(job.data)
        if start is not None:
            base = self.config["starting_models"][start]["overrides"]["model.source"]
            sets = [s for s in sets if not s.startswith("model.source=")] + [f"model.source={yaml_value(base)}"]
        return sets + ["method.name=fedavg", "method.options={}", "tracking.enabled=false", "name=tokenize"]

    def token_stamp(self, job: Job) -> str | None:
        """The output of the ``tokenize`` job a run waits for (jobs reading the same data share one)."""
        sets = self.token_sets(job)
        if sets is None:
            return None
        return self.layout.token_stamp(hashlib.sha1("\n".join(sorted(sets)).encode()).hexdigest()[:16])

    def token_jobs(self) -> dict[str, list[str]]:
        """Every ``tokenize`` job: its stamp -> its ``--set`` s."""
        jobs = {}
        for job in self.jobs.values():
            stamp = self.token_stamp(job)
            if stamp is not None:
                jobs.setdefault(stamp, self.token_sets(job))
        return jobs

    def student_start(self, name: str) -> str | None:
        """The starting model that is student ``name``'s teacher (``students.<name>.start``), if any."""
        start = self.config["students"][name].get("start")
        starts = self.config.get("starting_models") or {}
        if start is not None and start not in starts:
            raise ConfigError(
                f"students.{name}.start", f"unknown starting model {start!r}; defined: {', '.join(starts)}"
            )
        return start

    def student_flags(self, name: str) -> str:
        """The ``fedbt distill`` flags of student ``name`` (a ``start`` becomes ``--teacher`` its model)."""
        spec = {k: v for k, v in self.config["students"][name].items() if k != "start"}
        start = self.student_start(name)
        if start is not None:
            spec["teacher"] = f"{self.layout.start_dir(start)}/model"
        return " ".join(f"--{k} {shlex.quote(str(v))}" for k, v in spec.items())

    def student_inputs(self, name: str) -> list[str]:
        """The starting model a student's teacher is, if any."""
        start = self.student_start(name)
        return [self.layout.start_metrics(start)] if start else []

    def resources(self) -> dict[str, int]:
        """Resources of one training job (``run``, ``starting_model``, ``distill_student``): GPUs, memory,
        minutes."""
        spec = self.config.get("resources") or {}
        return {"gpu": spec.get("gpus", 1), "mem_mb": spec.get("mem_mb", 4000), "runtime": spec.get("runtime", 240)}

    # ------------------------------------------------------------------------------ studies and report

    def study_scopes(self) -> dict[str, list[dict[str, Any]]]:
        """Per MLflow experiment, the scope of each of its studies (``fedbt track-init --studies``): the run tags
        (data, variant, seed and, per variant with a grid, its point labels) of the runs its table reads."""
        experiments: dict[str, list[dict[str, Any]]] = {}
        for study, spec in self.config["studies"].items():
            scope = {
                "name": study,
                "title": spec["title"],
                "data": list(spec["data"]),
                "variants": list(spec["variants"]),
                "seeds": list(spec["seeds"]),
                "grid": {
                    v: [point_label(p) for p in self.points(study, v)]
                    for v in spec["variants"]
                    if self.points(study, v) != [()]
                },
            }
            experiments.setdefault(self.experiment(spec["scenario"]), []).append(scope)
        for start in (self.config.get("starting_models") or {}).values():
            experiments.setdefault(self.experiment(start["overrides"].get("scenario", "pretrain")), [])
        return experiments

    def _job_of(self, study: str, data: str, variant: str, seed: int, point: Point) -> Job:
        """The job that study ``study``'s cell (data set, variant) reads for a seed at a grid point."""
        scenario = self.config["studies"][study]["scenario"]
        return self._by_identity[(scenario, data, variant, seed, point, self.tuned_in(study, variant))]

    def cell_runs(self, study: str, variant: str, point: Point = ()) -> dict[str, list[str]]:
        """Per data set, the ``metrics.json`` of each seed that study ``study``'s table reads for a variant at
        grid point ``point``."""
        spec = self.config["studies"][study]

        def metrics(data: str, seed: int) -> str:
            job = self._job_of(study, data, variant, seed, point)
            return self.layout.run_metrics(job.study, data, job.label, seed)

        return {d: [metrics(d, s) for s in spec["seeds"]] for d in spec["data"]}

    def not_tuned(self, study: str, variant: str) -> str | None:
        """Why a row of a study with a grid (or ``lr_from``) runs at one setting (None: it has a grid or takes
        another study's choice, or the study has neither)."""
        lr_from = self.config["studies"][study].get("lr_from")
        if self.points(study, variant) != [()] or self.tuned_in(study, variant):
            return None
        if not self.grid_study(study) and lr_from is None:
            return None
        if not (self.config["variants"][variant] or {}).get("tuned", True):
            return f"variants.{variant}.tuned is false: it trains nothing a grid could change, so it runs once"
        return "no grid of its own (the study has no lr_grid): it runs at the configured settings"

    def report_spec(self) -> dict[str, Any]:
        """The tables (one per study) with the runs of every cell, for ``fedbt report --spec``."""
        tables = []
        for study, spec in self.config["studies"].items():
            rows = []
            for variant in spec["variants"]:
                vspec = self.variant(variant, f"variants.{variant}")
                method = vspec.get("method", variant)
                bert_base = vspec.get("bert_base", {"method": method, "options": {}})
                if bert_base is not None:
                    bert_base = {"method": method, "options": {}, **bert_base}
                paper_row = (vspec.get("paper") or {}).get(spec.get("paper"))
                options = vspec.get("options") or {}
                points = self.points(study, variant)
                candidates = {point_label(p): self.cell_runs(study, variant, p) for p in points}
                row = {
                    "variant": variant,
                    "method": method,
                    "options": options,
                    "runs": next(iter(candidates.values())),
                }
                if points != [()]:  # the report picks each cell's grid point on dev
                    row["lr_runs"] = candidates
                if self.not_tuned(study, variant):
                    row["not_tuned"] = self.not_tuned(study, variant)
                if vspec.get("match_flops"):
                    row["note"] = self.match_note(study, variant)
                if tuned_in := self.tuned_in(study, variant):
                    data_map = {data: self.source_data(study, data) for data in spec["data"]}
                    row["tuned_in"] = {"study": tuned_in, "data": data_map}
                rows.append(row | {"paper_row": paper_row, "bert_base": bert_base})
            tables.append(
                {
                    "name": study,
                    "title": spec["title"],
                    "scenario": spec["scenario"],
                    "paper": spec.get("paper"),
                    "reference": spec.get("reference", "fedavg"),
                    "second_reference": spec.get("second_reference"),
                    "base_arch": spec.get("base_arch", "bert-base-uncased"),
                    "base_tiers": spec.get("base_tiers"),
                    "tiered": self.tiered(study),
                    "private": self.private(study),
                    **({"timed": True, "target": spec.get("target")} if self.timed(study) else {}),
                    "columns": [{"data": d, "label": self.config["data"][d].get("task") or d} for d in spec["data"]],
                    "rows": rows,
                }
            )
        return {"tables": tables, "series": self.series_specs()}

    def series_specs(self) -> list[dict[str, Any]]:
        """The study config's ``series`` for the report: each with its points (study, data set, value), checked."""
        specs = []
        for name, spec in (self.config.get("series") or {}).items():
            points = []
            if name in self.config["studies"]:
                raise ConfigError(
                    f"series.{name}", "a series is named apart from every study (their outputs share tables/)"
                )
            for study, value in spec["studies"].items():
                if study not in self.config["studies"]:
                    raise ConfigError(
                        f"series.{name}.studies.{study}", f"unknown study; defined: {', '.join(self.config['studies'])}"
                    )
                points += [
                    {"study": study, "data": data, "value": value} for data in self.config["studies"][study]["data"]
                ]
            for i, pair in enumerate(spec["gaps"]):
                for study in spec["studies"]:
                    missing = [v for v in pair if v not in self.config["studies"][study]["variants"]]
                    if missing:
                        raise ConfigError(
                            f"series.{name}.gaps[{i}]", f"{missing[0]!r} is not among the variants of studies.{study}"
                        )
            specs.append(
                {"name": name, "title": spec["title"], "axis": spec["axis"], "points": points, "gaps": spec["gaps"]}
            )
        return specs

    def match_note(self, study: str, variant: str) -> str:
        """The caption's sentence on a FLOP-matched row: the budget its jobs ran at, per data set (and seed where
        they differ), and whose FLOPs it spends."""
        spec = self.config["studies"][study]
        vspec = self.config["variants"][variant]
        point = self.points(study, variant)[0]
        budgets, below_one = [], False
        for data in spec["data"]:
            matched = {
                seed: self.matched_budget(self._job_of(study, data, variant, seed, point)) for seed in spec["seeds"]
            }
            (key,) = {k for budget in matched.values() for k in budget}
            values = sorted({f"{budget[key]:g}" for budget in matched.values()})
            budgets.append(f"{key} = {' / '.join(values)} ({data})")
            below_one |= key == "local.steps" and any(budget[key] < 1 for budget in matched.values())
        unit = "a mean per client-round, dealt over the client-rounds" if "local.steps" in budgets[0] else "epochs"
        idle = (
            " Below 1 step a client-round dealt 0 sits the round out, so its FLOP % per trained client-round is"
            " above the reference's while its cumulative FLOPs (the series table) match them."
            if below_one
            else ""
        )
        return (
            f"{variant}: {vspec.get('method', variant)} at {', '.join(budgets)} ({unit}), the budget at which its "
            f"client FLOPs equal {vspec['match_flops']}'s (analytic, from both methods' plans: fedbt/matching.py)."
            + idle
        )

    def tiered(self, study: str) -> bool:
        """Whether some run of the study has resource tiers (``federation.tiers``): its report then writes a
        per-tier table too."""
        return any(tier_sets(self.job_sets(job)) for job in self._study_jobs(study))

    def timed(self, study: str) -> bool:
        """Whether some run of the study has devices (``federation.tiers[].device``): its report then adds
        simulated time and the time figure."""
        return any(device_sets(self.job_sets(job)) for job in self._study_jobs(study))

    def _study_jobs(self, study: str) -> list[Job]:
        spec = self.config["studies"][study]
        return [
            job
            for job in self.jobs.values()
            if job.scenario == spec["scenario"] and job.data in spec["data"] and job.variant in spec["variants"]
        ]

    def private(self, study: str) -> bool:
        """Whether some run of the study has client-level DP (``privacy``): its report then draws the score against
        epsilon too."""
        spec = self.config["studies"][study]
        jobs = [
            job
            for job in self.jobs.values()
            if job.scenario == spec["scenario"] and job.data in spec["data"] and job.variant in spec["variants"]
        ]
        return any(privacy_sets(self.job_sets(job)) for job in jobs)

    def report_outputs(self) -> dict[str, list[str]]:
        """The tables and figures ``fedbt report`` writes, by kind."""
        studies = list(self.config["studies"])
        tiered, private = [s for s in studies if self.tiered(s)], [s for s in studies if self.private(s)]
        timed = [s for s in studies if self.timed(s)]
        series = list(self.config.get("series") or {})
        return output_files(studies, self.layout.results, tiered, private, series, timed)

    def report_captions(self, paths: list[str]) -> list[tuple[str, str, str]]:
        """Per report output: (path, caption file under ``workflow/report/``, subcategory = its study's title)."""
        studies, series = self.config["studies"], self.config.get("series") or {}
        captioned = []
        for path in paths:
            stem = Path(path).stem
            name = next((n for n in series if stem == n or stem.startswith(f"{n}_")), None)
            if name is not None:  # a series' table (series.rst) or figure (series_cost.rst, series_gap.rst)
                kind = "series" + stem.removeprefix(name)
                captioned.append((path, f"{kind}.rst", series[name]["title"]))
                continue
            study = next((s for s in studies if stem in (s, f"{s}{TIER_SUFFIX}") or stem.startswith(f"{s}_")), None)
            kind = stem.removeprefix(f"{study}_") if study and stem != study else ("table" if study else stem)
            kind = "tiers" if study and stem == f"{study}{TIER_SUFFIX}" else kind
            captioned.append((path, f"{kind}.rst", studies[study]["title"] if study else "Method"))
        return captioned


def track_init_args(plan: Plan) -> str:
    """The arguments of ``fedbt track-init`` for a plan's store and studies."""
    studies = json.dumps(plan.study_scopes(), sort_keys=True)
    return f"--uri {shlex.quote(plan.tracking_uri)} --studies {shlex.quote(studies)}"
