"""What a study costs before it runs: the analytic training FLOPs of every job, from the study config, the model
shapes (meta device, no weights) and the data sizes, and the device-hours at a sustained throughput.

A job's *client* FLOPs are those its ledger will hold: every round, every selected client's local training
(:func:`fedbt.costs.analytic_train_flops` of the method's plan, fitted to its tier's memory budget as the
simulator fits it (:func:`fedbt.memory.fit_plan`: shrunk, or sitting the round out under ``budget_policy: drop``),
over the client's share of the data); the job also records each tier's largest memory estimate. Its
*evaluation* FLOPs are the rest of the job: the per-round scores (forward passes over the held-out or dev/test
examples) and the downstream fine-tuning (``evaluation.seeds`` x ``evaluation.epochs`` passes over the task's
train examples, full model, plus the dev/test forward passes).

Sizes: a data set's declared sizes (shipped tasks, ``sources.<name>.sizes``), else the data read on this machine.
Lengths: each sequence's token count from the data set's token cache when one was built with the job's
``max_length`` (length-grouped dynamic padding pads a sequence to within a few tokens of its own length), else
``max_length`` (an upper bound: fixed padding). The default throughput is the one ``benchmarks/throughput.py``
measured and saved for this device (:data:`THROUGHPUT_FILE`).

Simulated deployment time: a job whose tiers have devices (``federation.tiers[].device``) also gets the seconds its
rounds would take on them (:mod:`fedbt.timing`, as the simulator deals devices, availability and deadlines; the
server's aggregation left out; with ``federation.fraction`` < 1 every client is timed, an upper bound), and a
study the sum over its jobs, ``sim_deployment_hours``: hours on the clients' devices, beside the device-hours of
the machine that simulates it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedbt.config import RunConfig, load_config
from fedbt.errors import ConfigError, FedBTError
from fedbt.timing import round_span

THROUGHPUT_FILE = Path("results/benchmarks/throughput.json")


@dataclass
class JobCost:
    """One job's analytic FLOPs."""

    study: str
    data: str
    variant: str
    seed: int
    client_flops: int
    evaluation_flops: int
    lengths: str
    """Where the sequence lengths came from: ``cache`` or ``max_length`` (upper bound)."""
    notes: list[str] = field(default_factory=list)
    memory_mb: dict[str, float] = field(default_factory=dict)
    """Per resource tier (``all`` without tiers): the largest memory estimate of its clients' plans, MB
    (:mod:`fedbt.memory`, as the simulator fits them under ``federation.budget_policy``)."""
    dropped_client_rounds: int = 0
    """Client-rounds whose plan does not fit the tier's budget under ``budget_policy: drop``."""
    model_bytes: int = 0
    """Bytes of the job's final model (fp32 safetensors), counted in :attr:`disk_bytes` when the job keeps it."""
    disk_bytes: int = 0
    """What the job leaves on disk of its model: in its run directory (``keep_model``) or as the one MLflow copy
    (``tracking.log_model`` without ``keep_model``); 0 when it keeps none."""
    sim_seconds: float | None = None
    """Simulated deployment seconds of the job's rounds on its tiers' devices (:mod:`fedbt.timing`: every round
    as long as its slowest available client, or its deadline; the server's aggregation left out); None without
    devices."""


# ------------------------------------------------------------------------------------ the jobs


def _sets(layer: Mapping[str, Any]) -> list[str]:
    import yaml

    def one_line(value) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()

    return [f"{key}={one_line(value)}" for key, value in layer.items()]


def study_jobs(study: Mapping[str, Any]) -> list[tuple[str, str, str, int, RunConfig]]:
    """``(study, data set, variant label, seed, run config)`` of every job of a study config, each once (in the
    first study that lists it), at every grid point (:func:`fedbt.pipeline.grid_points`; the label names the
    point as the run directory does, ``fedprox-lr0.0003-mu0.01``, ``fedavg-tuned-in-budget-s8``), with the
    overrides the pipeline gives it (a starting model or a distilled student that the pipeline would build first
    is replaced by the architecture it has)."""
    from fedbt.pipeline import Job, grid_points, lr_source

    jobs, seen = [], set()
    for name, spec in study["studies"].items():
        for data in spec["data"]:
            for variant in spec["variants"]:
                for seed in spec["seeds"]:
                    for point in grid_points(study, name, variant):
                        identity = (spec["scenario"], data, variant, seed, point, lr_source(study, name, variant))
                        if identity in seen:
                            continue
                        seen.add(identity)
                        jobs.append((name, data, Job(name, *identity).label, seed, _matched(study, name, identity)))
    return jobs


def _matched(study: Mapping[str, Any], name: str, identity: tuple) -> RunConfig:
    """A job's run config; for a variant with ``match_flops``, at the budget that spends its reference variant's
    client FLOPs (:mod:`fedbt.matching`, as the pipeline plans it)."""
    from fedbt.matching import matched_budget
    from fedbt.pipeline import grid_points

    scenario, data, variant, seed, point, _ = identity  # lr_from: the learning rate does not change the FLOPs
    config = _job_config(study, scenario, data, variant, seed, point)
    reference = (study["variants"].get(variant) or {}).get("match_flops")
    if reference is None:
        return config
    ref_point = grid_points(study, name, reference)[0]
    match = matched_budget(_job_config(study, scenario, data, reference, seed, ref_point), config)
    return _job_config(study, scenario, data, variant, seed, point, extra=match.override())


def _job_config(
    study: Mapping[str, Any], scenario: str, data: str, variant: str, seed: int, point: tuple = (), extra=None
) -> RunConfig:
    vspec = study["variants"].get(variant) or {}
    options = dict(vspec.get("options") or {})
    data_spec = study["data"][data]
    starting = {}
    if data_spec.get("start"):
        starting = {"model.source": study["starting_models"][data_spec["start"]]["overrides"]["model.source"]}
    if vspec.get("student"):
        options["student"] = _student_arch(study, vspec["student"])
    kept = {
        "keep_model": study.get("keep_models", False),
        "tracking.log_model": (study.get("tracking") or {}).get("log_model", False),
    }
    layers = [
        kept,
        study.get("defaults") or {},
        (study.get("scenarios") or {}).get(scenario) or {},
        data_spec.get("overrides") or {},
        starting,
        vspec.get("overrides") or {},
        {"scenario": scenario, "method.name": vspec.get("method", variant), "method.options": options, "seed": seed},
        dict(point),
        extra or {},
    ]
    try:
        return load_config(None, [item for layer in layers for item in _sets(layer)])
    except ConfigError as error:
        raise ConfigError(error.key, f"job {data}/{variant}/seed{seed}: {error}") from None


def _student_arch(study: Mapping[str, Any], name: str) -> str:
    """The inline shape of a student the pipeline distils (its teacher's shape with the kept layers)."""
    from fedbt.models import arch_config

    spec = study["students"][name]
    teacher = spec.get("teacher", "minilm")
    if spec.get("start"):
        teacher = study["starting_models"][spec["start"]]["overrides"]["model.source"]
    config = arch_config(teacher)
    layers = len(str(spec["layers"]).split(","))
    return (
        f"bert:layers={layers},hidden={config.hidden_size},heads={config.num_attention_heads},"
        f"ffn={config.intermediate_size},vocab={config.vocab_size}"
    )


# ------------------------------------------------------------------------------------ data sizes


def _cached_lengths(cache_dir: str, name: str, max_length: int, split: str) -> np.ndarray | None:
    """Token counts of a split from the newest token cache of data set ``name`` at ``max_length``, if any."""
    from fedbt.data.sources import slug

    folder = Path(cache_dir) / "tokens"
    candidates = []
    for meta_path in folder.glob(f"{slug(name)}-*/meta.json") if folder.is_dir() else []:
        meta = json.loads(meta_path.read_text())
        if meta.get("name") == name and meta.get("max_length") == max_length and split in meta["splits"]:
            candidates.append(meta_path)
    if not candidates:
        return None
    newest = max(candidates, key=lambda p: p.stat().st_mtime).parent
    return np.diff(np.load(newest / f"{split}.offsets.npy"))


@dataclass
class Sizes:
    """A data set split's examples and, when known, their token counts."""

    count: int
    lengths: np.ndarray | None

    def histogram(self, rows: np.ndarray | None, max_length: int) -> np.ndarray:
        """Sequences per padded length (index = length) of ``rows`` (None: all)."""
        if self.lengths is None:
            histogram = np.zeros(max_length + 1, dtype=np.int64)
            histogram[max_length] = self.count if rows is None else len(rows)
            return histogram
        chosen = self.lengths if rows is None else self.lengths[rows]
        return np.bincount(np.minimum(chosen, max_length), minlength=max_length + 1)


def corpus_sizes(config: RunConfig) -> Sizes:
    from fedbt.data.corpus import get_corpus

    spec = get_corpus(config.data.corpus, "data.corpus", config.sources)
    return _memo(_corpus_sizes, spec, config.data.data_dir, config.data.cache_dir, config.model.max_length)


_MEMO: dict[str, Any] = {}


def _memo(function, spec, *args):
    """``function(spec, *args)``, computed once per process (specs hold mappings, so they key by their JSON)."""
    key = json.dumps(
        [
            function.__name__,
            spec.declaration(),
            dict(spec.sizes if hasattr(spec, "sizes") else spec.split_sizes),
            *args,
        ],
        default=str,
    )
    if key not in _MEMO:
        _MEMO[key] = function(spec, *args)
    return _MEMO[key]


def _corpus_sizes(spec, data_dir: str, cache_dir: str, max_length: int) -> Sizes:
    from fedbt.data.corpus import load_corpus

    if spec.kind == "image":
        from fedbt.data.images import load_image_splits

        data_set, part = spec.image_part
        return Sizes(len(load_image_splits(data_set, data_dir)[part]), None)
    lengths = _cached_lengths(cache_dir, spec.name, max_length, "train")
    if lengths is not None:
        return Sizes(len(lengths), lengths)
    if "train" in spec.sizes:
        return Sizes(int(spec.sizes["train"]), None)
    try:
        return Sizes(len(load_corpus(spec, data_dir)), None)
    except FedBTError as error:
        raise FedBTError(
            f"corpus {spec.name!r}: its size is not declared (sizes: {{train: N}}) and it cannot be read here ({error})"
        ) from error


def task_sizes(config: RunConfig, task_name: str, key: str) -> dict[str, Sizes]:
    spec = _task(config, task_name, key)
    return _memo(_task_sizes, spec, config.data.data_dir, config.data.cache_dir, config.model.max_length, key)


def _task_sizes(spec, data_dir: str, cache_dir: str, max_length: int, key: str) -> dict[str, Sizes]:
    from fedbt.data.tasks import load_task

    splits = {}
    for split in ("train", "dev", "test"):
        lengths = _cached_lengths(cache_dir, spec.name, max_length, split)
        if lengths is not None:
            splits[split] = Sizes(len(lengths), lengths)
        elif split in spec.split_sizes:
            splits[split] = Sizes(int(spec.split_sizes[split]), None)
    if len(splits) < 3:
        try:
            loaded = load_task(spec, data_dir, key)
        except FedBTError as error:
            raise FedBTError(
                f"task {spec.name!r}: its sizes are not declared (sizes: {{train: N, dev: N, test: N}}) "
                f"and it cannot be read here ({error})"
            ) from error
        splits = {split: splits.get(split, Sizes(len(loaded[split]), None)) for split in ("train", "dev", "test")}
    return splits


def _task(config: RunConfig, name: str, key: str):
    from fedbt.data.tasks import get_task

    return get_task(name, key, config.sources)


# ------------------------------------------------------------------------------------------ FLOPs


_UNIT: dict[tuple, tuple[int, int]] = {}


def _unit_flops(arch, plan, length: int, head: str) -> tuple[int, int]:
    """``(per sequence, per predicted token)`` FLOPs of ``plan`` at ``length``: the analytic model is linear in the
    sequences and in the predicted tokens at a fixed length."""
    from fedbt.costs import analytic_train_flops

    key = (id(arch), plan, length, head)
    if key not in _UNIT:
        base = analytic_train_flops(arch, plan, 1, length, 0, head=head)
        _UNIT[key] = (base, analytic_train_flops(arch, plan, 1, length, 1, head=head) - base)
    return _UNIT[key]


def _flops(arch, plan, histogram: np.ndarray, head: str, settings, scale: float = 1.0) -> int:
    """Analytic FLOPs of one pass of ``plan`` over sequences with the given length histogram."""
    from fedbt.training.objectives import get_objective

    objective = get_objective(head)
    total = 0
    for length in np.flatnonzero(histogram):
        sequences = int(histogram[length])
        predicted = objective.expected_predicted(sequences, sequences * int(length), settings)
        per_sequence, per_predicted = _unit_flops(arch, plan, int(length), head)
        total += sequences * per_sequence + predicted * per_predicted
    return round(total * scale)


def _sequences_processed(examples: int, local, scale: float, index: int) -> int:
    """Sequences a client trains on in its ``index``-th client-round (:func:`fedbt.training.loop.steps_for` steps
    of ``local``, a :class:`~fedbt.config.LocalConfig`)."""
    from fedbt.training.loop import steps_for

    if examples == 0:
        return 0
    batch, steps = local.batch_size, local.steps
    count = steps_for(examples, batch, local.epochs, steps, index)
    if count == 0:  # dealt no steps of a mean below 1: the client sits the round out
        return 0
    if steps is not None:
        count = max(1, round(count * scale))
    per_epoch = math.ceil(examples / batch)
    full, rest = divmod(count, per_epoch)
    return full * examples + min(rest * batch, examples)


def job_cost(study: str, data: str, variant: str, seed: int, config: RunConfig) -> JobCost:
    """The analytic FLOPs of one job (see the module docstring)."""
    from fedbt.costs import head_for, meta_arch
    from fedbt.data.partition import partition_indices
    from fedbt.federated.devices import timing_for
    from fedbt.federated.method import ClientPlan, create_method, get_method
    from fedbt.federated.tiers import FULL, deal, tiers_from_config
    from fedbt.memory import fit_plan, memory_settings
    from fedbt.training.objectives import ObjectiveSettings

    head, max_length, notes = config.local.objective, config.model.max_length, []
    task_name = config.data.task if config.scenario == "finetune" else config.evaluation.task
    tasks = task_sizes(config, task_name, "data.task") if task_name else None
    num_labels = _num_labels(config, task_name, notes) if config.scenario == "finetune" else 2
    source = get_method(config.method.name).starting_model(config.method.options, config.model.source)
    model, _ = meta_arch(source, head_for(source, head), num_labels)
    fed = config.federation
    method = create_method(
        config.method.name,
        model,
        fed.rounds,
        config.seed,
        config.method.options,
        config.scenario,
        tiers_from_config(fed.tiers, data_dir=config.data.data_dir),
    )
    arch = method.arch
    settings = ObjectiveSettings(
        max_length=max_length, mlm_probability=config.local.mlm_probability, masked_only=config.local.masked_only_logits
    )
    if arch.vision:
        max_length = arch.num_patches + 1
    settings_data = config.data
    if config.scenario == "pretrain":
        from fedbt.data.run_data import corpus_slices

        pool = corpus_sizes(config)
        train, dev, test = corpus_slices(
            pool.count, settings_data.max_examples, settings_data.dev_examples, settings_data.heldout_examples
        )
        count, heldout = len(train), len(dev) + len(test)  # the dev and the test slice are scored every round
        rows = np.arange(count)
    else:
        pool = tasks["train"]
        count = pool.count if settings_data.max_examples is None else min(pool.count, settings_data.max_examples)
        rows = np.asarray(_subset(pool.count, settings_data.max_examples))
    if arch.vision:
        pool = Sizes(pool.count, None)
    scheme = fed.partition.scheme
    if scheme in ("dirichlet", "papers"):
        notes.append(f"{scheme} partition estimated as equal client shares")
        scheme = "uniform"
    clients = [
        rows[np.asarray(c, dtype=np.int64)]
        for c in partition_indices(
            count, fed.clients, scheme, config.seed, alpha=fed.partition.alpha, min_size=fed.partition.min_size
        )
    ]
    # the method's arrangement of the clients (e.g. centralised training pools them), applied to client ids
    groups = method.arrange_clients([[k] for k in range(len(clients))])
    arranged = [np.concatenate([clients[k] for k in group]) if len(group) else rows[:0] for group in groups]
    scale = len(clients) / len(arranged)
    selected = max(1, round(fed.fraction * len(arranged))) if fed.fraction < 1 else len(arranged)
    # each client's resource tier, as the simulator deals it (pooled clients train in one place: no tiers)
    dealt = deal(method.tiers, fed.clients, config.seed) if fed.tiers and len(arranged) == len(clients) else []
    local = config.local
    client_flops = dropped = 0
    memory, memory_mb = memory_settings(config, arch), {}
    timing = timing_for(config, [tier.name for tier in dealt]) if dealt else None
    sim_seconds = 0.0
    for round_idx in range(fed.rounds):
        times = []
        for client_id in range(len(arranged)):
            tier = dealt[client_id] if dealt else FULL
            fitted = fit_plan(method, round_idx, client_id, tier, memory, fed.budget_policy)
            plan, dropped = fitted.plan, dropped + fitted.dropped
            if fitted.estimate is not None:
                memory_mb[tier.name] = max(memory_mb.get(tier.name, 0.0), fitted.estimate.mb)
            members = arranged[client_id]
            if not plan.trainable or not len(members):
                continue
            if timing is not None and not timing.available(round_idx, client_id):
                continue
            index = round_idx * len(arranged) + client_id
            processed = _sequences_processed(len(members), local, scale, index)
            histogram = pool.histogram(members, max_length)
            client_flops += _flops(
                arch, plan, histogram, head, settings, processed / len(members) * selected / len(arranged)
            )
            if timing is not None:
                flops = _flops(arch, plan, histogram, head, settings, processed / len(members))
                times.append(_client_seconds(method, plan, timing, client_id, flops))
        if timing is not None:
            sim_seconds += round_span(times, timing.deadline(times))
    forward = ClientPlan(tuple(range(arch.num_layers)), frozenset())
    evaluation_flops = 0
    if config.scenario == "pretrain" and heldout:
        histogram = pool.histogram(np.arange(count, count + heldout), max_length)
        evaluation_flops += fed.rounds * _flops(arch, forward, histogram, head, settings)
    elif config.scenario == "finetune":
        for split, limit in (("dev", settings_data.heldout_examples), ("test", config.evaluation.max_eval_examples)):
            histogram = tasks[split].histogram(np.asarray(_subset(tasks[split].count, limit)), max_length)
            evaluation_flops += fed.rounds * _flops(arch, forward, histogram, head, settings)
    if config.scenario == "pretrain" and task_name:
        evaluation_flops += _downstream(config, task_name, tasks, source, settings, max_length)
    lengths = "cache" if pool.lengths is not None else "max_length"
    cost = JobCost(study, data, variant, seed, client_flops, evaluation_flops, lengths, notes, memory_mb, dropped)
    cost.sim_seconds = sim_seconds if timing is not None else None
    cost.model_bytes = 4 * arch.numel(arch.names)
    cost.disk_bytes = cost.model_bytes if config.keep_model or config.tracking.log_model else 0
    return cost


def _client_seconds(method, plan, timing, client_id: int, flops: int) -> float:
    """A client-round's simulated seconds: its plan's download (the tensors of its local model) and upload (its
    trained tensors) at 4 bytes a value (what an unencoded fp32 payload weighs; the run's ledger counts the encoded
    messages exactly), and ``flops``."""
    from fedbt.memory import plan_numel

    arch = method.arch
    download = 4 * plan_numel(arch, plan, plan.download_names(arch)) if method.transmits else 0
    upload = 4 * plan_numel(arch, plan, plan.trainable) if method.transmits else 0
    return timing.client_time(client_id, download, flops, upload).total


def _num_labels(config: RunConfig, task_name: str, notes: list[str]) -> int:
    """The task's label count: declared, or read from its data; 2 (a classifier's FLOPs are negligible) when
    neither is possible here (a hub data set offline)."""
    try:
        return len(_labels(config, task_name))
    except FedBTError:
        spec = _task(config, task_name, "data.task")
        if spec.label_names:
            return len(spec.label_names)
        notes.append(f"labels of {task_name} unknown offline: a 2-way head assumed")
        return 2


def _labels(config: RunConfig, task_name: str) -> tuple[str, ...]:
    from fedbt.data.tasks import load_task

    spec = _task(config, task_name, "data.task")
    if spec.labels:
        return spec.labels
    train = load_task(spec, config.data.data_dir, "data.task", config.sources)["train"]
    feature = train.features["tags" if spec.kind == "token_classification" else "label"]
    return tuple(getattr(feature, "feature", feature).names)


def _subset(n: int, limit: int | None) -> list[int]:
    from fedbt.data.tasks import subset_rows

    return subset_rows(n, limit)


def _downstream(config: RunConfig, task_name: str, tasks: dict, source: str, settings, max_length: int) -> int:
    """Centralised fine-tuning after pre-training: seeds x epochs of full training, plus dev/test forward passes."""
    from fedbt.costs import head_for, meta_arch
    from fedbt.federated.method import ClientPlan
    from fedbt.models import ModelArch

    spec, ev = _task(config, task_name, "evaluation.task"), config.evaluation
    head = head_for(source, spec.kind)
    arch = ModelArch.from_model(meta_arch(source, head, _num_labels(config, task_name, []))[0])
    full = ClientPlan(tuple(range(arch.num_layers)), frozenset(arch.names))
    forward = ClientPlan(tuple(range(arch.num_layers)), frozenset())
    train = tasks["train"].histogram(np.asarray(_subset(tasks["train"].count, ev.max_train_examples)), max_length)
    per_epoch = _flops(arch, full, train, head, settings)
    for split in ("dev", "test"):
        rows = np.asarray(_subset(tasks[split].count, ev.max_eval_examples))
        per_epoch += _flops(arch, forward, tasks[split].histogram(rows, max_length), head, settings)
    return len(ev.seeds) * ev.epochs * per_epoch


# ------------------------------------------------------------------------------------------ report


def measured_tflops(path: Path = THROUGHPUT_FILE) -> tuple[float, str] | None:
    """The sustained TFLOP/s ``benchmarks/throughput.py`` measured on this device (bert-base shape, dynamic
    padding), or None when it has not been run here."""
    if not path.is_file():
        return None
    measured = json.loads(path.read_text())
    from fedbt.training.loop import device_name

    if measured.get("device") != device_name():
        return None
    return float(measured["sustained_tflops"]), measured["device"]


def kept_inputs_bytes(study: Mapping[str, Any]) -> int:
    """Bytes of the starting models and distilled students the pipeline builds and keeps (later jobs read them):
    fp32 weights of their architectures."""
    from fedbt.costs import head_for, meta_arch
    from fedbt.models import ModelArch

    sources = [
        (spec["overrides"]["model.source"], spec["overrides"].get("local.objective", "mlm"))
        for spec in (study.get("starting_models") or {}).values()
    ]
    sources += [(_student_arch(study, name), "mlm") for name in study.get("students") or {}]
    total = 0
    for source, head in sources:
        model, _ = meta_arch(source, head_for(source, head))
        arch = ModelArch.from_model(model)
        total += 4 * arch.numel(arch.names)
    return total


def estimate(study: Mapping[str, Any], tflops: float) -> dict[str, Any]:
    """Every job's FLOPs, per study and in total, with device-hours at ``tflops`` sustained TFLOP/s, the disk its
    kept models take (``disk_bytes``; ``total.disk_bytes`` adds the starting models and students), and
    ``memory_mb``: per study, variant and tier, the largest memory estimate of a client plan (MB)."""
    jobs = [job_cost(*job) for job in study_jobs(study)]
    hours = 1.0 / (tflops * 1e12 * 3600)
    studies: dict[str, dict[str, Any]] = {}
    for job in jobs:
        row = studies.setdefault(job.study, {"jobs": 0, "client_flops": 0, "evaluation_flops": 0, "disk_bytes": 0})
        row["jobs"] += 1
        row["client_flops"] += job.client_flops
        row["evaluation_flops"] += job.evaluation_flops
        row["disk_bytes"] += job.disk_bytes
        if job.sim_seconds is not None:
            row["sim_deployment_hours"] = row.get("sim_deployment_hours", 0.0) + job.sim_seconds / 3600
    for row in studies.values():
        row["device_hours"] = (row["client_flops"] + row["evaluation_flops"]) * hours
        row["client_device_hours"] = row["client_flops"] * hours
    keys = ("jobs", "client_flops", "evaluation_flops", "disk_bytes")
    total = {key: sum(row[key] for row in studies.values()) for key in keys}
    total["kept_inputs_bytes"] = kept_inputs_bytes(study)
    total["disk_bytes"] += total["kept_inputs_bytes"]
    total["device_hours"] = (total["client_flops"] + total["evaluation_flops"]) * hours
    total["client_device_hours"] = total["client_flops"] * hours
    simulated = [row["sim_deployment_hours"] for row in studies.values() if "sim_deployment_hours" in row]
    if simulated:
        total["sim_deployment_hours"] = sum(simulated)
    memory: dict[str, dict[str, dict[str, float]]] = {}
    for job in jobs:
        tiers = memory.setdefault(job.study, {}).setdefault(job.variant, {})
        for tier, mb in job.memory_mb.items():
            tiers[tier] = max(tiers.get(tier, 0.0), mb)
    return {
        "tflops": tflops,
        "jobs": [job.__dict__ for job in jobs],
        "studies": studies,
        "total": total,
        "memory_mb": memory,
    }
