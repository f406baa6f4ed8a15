"""One federated run from a config, one way through, in four named steps:

1. :func:`prepare` checks everything that does not need weights or data (keys, names, method options, the
   objective against the task and the model's modality, and under ``federation.budget_policy: refuse`` every
   client plan's memory estimate against its tier's budget) and returns a :class:`PreparedRun`;
2. :func:`build_federation` gets the data in one call (:func:`fedbt.data.run_data.load_run_data`: tokenised
   once into the shared cache, partitioned by the shared index file), the starting global model and the objective;
3. :func:`simulate` runs the rounds (resuming from a checkpoint) and saves the model of the reported round;
4. :func:`evaluate` fine-tunes and scores it downstream (``evaluation.task``), and :func:`record` writes
   ``metrics.json`` and the MLflow run.

:func:`execute` is that sequence. The run directory holds ``config.yaml``, ``ledger.csv``, ``metrics.json`` and
``model/``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from fedbt.config import ModelConfig, RunConfig, to_yaml
from fedbt.data.run_data import RunData
from fedbt.federated.method import Method, create_method, get_method, load_plugins
from fedbt.federated.simulator import SimulationSetup
from fedbt.ledger import Ledger
from fedbt.memory import memory_settings
from fedbt.models import is_vision, load_model, meta_model, model_config_for, sequence_length
from fedbt.training.objectives import Objective, ObjectiveSettings, available_objectives, get_objective

if TYPE_CHECKING:
    from fedbt.federated.simulator import Runtime
    from fedbt.tracking import NoTracking, RunTracker

log = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    """A validated run: the config, its method instance and the facts derived from it."""

    config: RunConfig
    method: Method
    objective: type[Objective]
    num_labels: int | None
    model_config: ModelConfig
    out_dir: Path
    patches: int
    """Image patches per example (0 for text models)."""

    @property
    def head(self) -> str:
        """The model head the run trains (the objective's name)."""
        return self.objective.name

    def objective_settings(self, **overrides: Any) -> ObjectiveSettings:
        local = self.config.local
        settings = ObjectiveSettings(
            max_length=self.config.model.max_length,
            padding=local.padding,
            mlm_probability=local.mlm_probability,
            masked_only=local.masked_only_logits,
            mask_ratio=local.mim_mask_ratio,
            patches=self.patches,
        )
        return dataclasses.replace(settings, **overrides)


def _check_data(config: RunConfig, objective: type[Objective], vision: bool) -> int | None:
    """The data sets exist and suit the objective and the model; for fine-tuning, the number of labels."""
    from fedbt.data.corpus import get_corpus
    from fedbt.data.tasks import get_task, load_task
    from fedbt.errors import ConfigError

    if config.evaluation.task is not None:
        get_task(config.evaluation.task, "evaluation.task", config.sources)
    kind = "an image" if vision else "a text"
    if config.scenario == "pretrain":
        corpus = get_corpus(config.data.corpus, "data.corpus", config.sources)
        if (corpus.kind == "image") != vision:
            raise ConfigError("data.corpus", f"corpus {config.data.corpus!r} does not suit {kind} model")
        return None
    task = get_task(config.data.task, "data.task", config.sources)
    if objective.name != task.kind:
        raise ConfigError(
            "local.objective", f"task {task.name!r} is a {task.kind} task: set local.objective={task.kind}"
        )
    if task.labels is not None:
        return len(task.labels)
    train = load_task(task, config.data.data_dir, "data.task", config.sources)["train"]  # labels inferred from it
    feature = train.features["tags" if task.kind == "token_classification" else "label"]
    return len(getattr(feature, "feature", feature).names)


def prepare(config: RunConfig) -> PreparedRun:
    """Validate everything that does not need weights: plugins, data set names, method options, and that the
    model, the objective and the data are of one modality (text or image)."""
    from fedbt.errors import ConfigError

    load_plugins(config.plugins)
    objective = get_objective(config.local.objective)
    source = get_method(config.method.name).starting_model(config.method.options, config.model.source)
    model_config = dataclasses.replace(config.model, source=source)
    vision = is_vision(model_config_for(model_config))
    if (objective.modality == "image") != vision:
        allowed = [n for n, o in available_objectives().items() if (o.modality == "image") == vision]
        raise ConfigError(
            "local.objective",
            f"model.source {config.model.source!r} is {'an image' if vision else 'a text'} model; allowed "
            f"objectives: {', '.join(allowed)}",
        )
    num_labels = _check_data(config, objective, vision)
    hf_config = model_config_for(model_config, num_labels)
    from fedbt.federated.server_optimizer import server_optimizer_for
    from fedbt.federated.tiers import tiers_from_config

    method = create_method(
        config.method.name,
        meta_model(hf_config, objective.name),
        config.federation.rounds,
        config.seed,
        config.method.options,
        config.scenario,
        tiers_from_config(config.federation.tiers, data_dir=config.data.data_dir),
    )
    server_optimizer_for(method, config.server.optimizer)  # one server optimizer per run, checked before loading
    _check_privacy(config, method)
    _refuse_over_budget(config, method)
    patches = sequence_length(hf_config, config.model.max_length) - 1 if vision else 0
    return PreparedRun(config, method, objective, num_labels, model_config, config.resolved_out_dir(), patches)


def fingerprint(config: RunConfig) -> str:
    """Hash of what determines a run's results: everything but the output place, tracking and names (the
    evaluation settings included: a resumed run must score its rounds as the interrupted one did)."""
    relevant = dataclasses.asdict(config)
    for key in ("out_dir", "tracking", "name", "study"):
        relevant.pop(key)
    if relevant["privacy"] is None:  # runs without DP keep the fingerprints they had before the key existed
        relevant.pop("privacy")
    relevant["data"].pop("cache_dir")
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def run_key(config: RunConfig) -> str:
    """The identity of a run in MLflow: study, name, method, data and seed."""
    data = config.data.corpus if config.scenario == "pretrain" else config.data.task
    return f"{config.study}/{config.name}/{config.method.name}/{data}/seed{config.seed}"


def tokenize(prepared: PreparedRun) -> dict[str, str]:
    """Build (or find) the token caches the run reads (its corpus or task, and ``evaluation.task``): data set ->
    cache folder. Image data sets have none. The pipeline runs this once per data set before its jobs fan out."""
    from fedbt.data.corpus import get_corpus
    from fedbt.data.run_data import corpus_tokens, task_examples
    from fedbt.data.tasks import get_task
    from fedbt.models import load_processor

    config = prepared.config
    if prepared.objective.modality == "image":
        return {}
    processor, max_length, folders = load_processor(prepared.model_config), config.model.max_length, {}
    if config.scenario == "pretrain":
        examples = corpus_tokens(
            get_corpus(config.data.corpus, "data.corpus", config.sources), processor, max_length, config.data
        )
        folders[config.data.corpus] = str(Path(examples.split.ids.filename).parent)
    for name, key in ((config.data.task, "data.task"), (config.evaluation.task, "evaluation.task")):
        if name is not None and (config.scenario == "finetune" or key == "evaluation.task"):
            task = get_task(name, key, config.sources)
            splits = task_examples(
                task, processor, max_length, {"train": None}, config.data, get_objective(task.kind, key), config.sources
            )
            folders[name] = str(Path(splits["train"].split.ids.filename).parent)
    return folders


# --------------------------------------------------------------------------------------- steps


@dataclass
class Federation:
    """What a run trains, built from a prepared run: the data, the starting global model and the simulation
    setup (clients' examples, objective, local settings)."""

    data: RunData
    global_model: nn.Module
    setup: SimulationSetup


@dataclass
class Simulated:
    """What the rounds produced: one record per round, the ledger, the saved model, the time they took and what the
    runtime (in-process, or Flower) reports."""

    records: list[dict[str, Any]]
    ledger: Ledger
    model_dir: Path
    seconds: float
    runtime: dict[str, Any]
    runtime_name: str


def build_federation(prepared: PreparedRun) -> Federation:
    """Step 1: the run's data (one call to the data layer), the starting global model (as the method prepares
    it, on the run's device) and the objective.

    Deterministic from the config: a Flower ClientApp builds the same federation as the server to train its
    share of the data on the same starting model.
    """
    from fedbt.data.run_data import load_run_data
    from fedbt.federated.devices import timing_for
    from fedbt.federated.tiers import deal
    from fedbt.training import loop

    config = prepared.config
    data = load_run_data(config, prepared.model_config, prepared.objective)
    device = loop.resolve_device(config.local.device)
    loop.configure_device(device)
    global_model = load_model(prepared.model_config, prepared.head, config.seed, prepared.num_labels)
    global_model = prepared.method.prepare_model(global_model).to(device)
    fed = config.federation
    dealt = deal(prepared.method.tiers, fed.clients, config.seed) if fed.tiers else ()
    setup = SimulationSetup(
        clients=data.clients,
        objective=prepared.objective.build(data.processor, prepared.objective_settings()),
        local=config.local,
        rounds=fed.rounds,
        fraction=fed.fraction,
        aggregation=fed.aggregation,
        seed=config.seed,
        device=device,
        tiers=dealt,
        server_optimizer=config.server.optimizer,
        privacy=config.privacy,
        memory=memory_settings(config, prepared.method.arch),
        budget_policy=fed.budget_policy,
        timing=timing_for(config, [tier.name for tier in dealt]) if dealt else None,
    )
    return Federation(data, global_model, setup)


def simulate(
    prepared: PreparedRun,
    federation: Federation,
    runtime: Runtime | None = None,
    observers: list[Callable[[dict], None]] | None = None,
) -> Simulated:
    """Step 2: run the rounds (resuming if possible) and save the global model of the reported round. ``runtime`` is
    where clients train (default: in this process; :mod:`fedbt.flower`: Flower ClientApps); each of ``observers``
    gets every round's record as it ends (the live MLflow run)."""
    from fedbt.federated.simulator import Simulator

    config, out_dir = prepared.config, prepared.out_dir
    started = time.perf_counter()
    ledger = Ledger(out_dir / "ledger.csv")
    select = None
    if config.scenario == "finetune":
        select = functools.partial(selected_round, primary=federation.data.task.scored_metrics[0])
    simulator = Simulator(
        federation.global_model,
        prepared.method,
        federation.setup,
        ledger,
        out_dir / "checkpoint",
        fingerprint(config),
        round_evaluator(prepared, federation),
        select,
        runtime,
    )
    simulator.observers.extend(observers or [])
    records = simulator.run()
    simulator.restore_selected()  # fine-tuning: the model of the reported round is the one saved
    model_dir = out_dir / "model"
    prepared.method.deploy(federation.global_model).save_pretrained(model_dir)
    federation.data.processor.save_pretrained(model_dir)
    seconds = time.perf_counter() - started
    return Simulated(records, ledger, model_dir, seconds, simulator.runtime.report(), simulator.runtime.name)


def evaluate(prepared: PreparedRun, model_dir: Path) -> dict[str, Any] | None:
    """Step 3: downstream evaluation of the saved model (``evaluation.task``), or None."""
    config = prepared.config
    if config.evaluation.task is None:
        return None
    from fedbt.evaluation import finetune_and_score

    return finetune_and_score(
        model_dir,
        config.evaluation.task,
        config.evaluation,
        prepared.model_config,
        config.data.data_dir,
        config.local.device,
        data=config.data,
        sources=config.sources,
    )


def record(
    prepared: PreparedRun,
    federation: Federation,
    simulated: Simulated,
    evaluation: dict | None,
    started: float,
    tracker: RunTracker | NoTracking,
) -> dict[str, Any]:
    """Step 4: the run's metrics (``metrics.json``); the live MLflow run ends FINISHED; the checkpoint is
    removed, and so is the model unless ``keep_model``."""
    config, out_dir, method = prepared.config, prepared.out_dir, prepared.method
    records, partition = simulated.records, federation.data.partition
    device = federation.setup.device
    metrics = {
        "run_key": run_key(config),
        "name": config.name,
        "study": config.study,
        "scenario": config.scenario,
        "method": config.method.name,
        "method_options": method.options_dict(),
        "method_report": method.report(),
        "data": config.data.corpus if config.scenario == "pretrain" else config.data.task,
        "seed": config.seed,
        "device": str(device),
        "partition": {"path": str(partition.path), "sha256": partition.digest, "sizes": partition.sizes()},
        "runtime": simulated.runtime,
        "rounds": records,
        "plan_sha256": hashlib.sha256("".join(r["plan_sha256"] for r in records).encode()).hexdigest(),
        "costs": simulated.ledger.summary(),
        "evaluation": evaluation,
        "model_kept": config.keep_model,
        "federated_seconds": simulated.seconds,
        "total_seconds": time.perf_counter() - started,
    }
    if config.scenario == "finetune":
        metrics["selection"] = best_round(records, federation.data.task.scored_metrics[0])
        metrics["majority"] = majority_scores(prepared, federation)
    metrics["dropped_client_rounds_pct"] = metrics["costs"]["dropped_client_rounds_pct"]
    if config.privacy is not None:
        metrics["privacy"] = _privacy_summary(config, records)
    if config.federation.tiers:
        metrics["tiers"] = _tier_summary(simulated.ledger, method)
    if any("sim_round_seconds" in r for r in records):  # timed (fedbt.timing): the tiers have devices
        _timing_summary(metrics, simulated.ledger.rows(), federation.setup.timing)
    metrics["final"] = final_metrics(metrics)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)  # the run is complete; model/ holds its state
    tags = {"fedbt.device": str(device), "fedbt.runtime": simulated.runtime_name}
    run_id = tracker.finish(metrics["final"], tags, simulated.model_dir)
    if run_id is not None:
        metrics["mlflow_run_id"] = run_id
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if not config.keep_model:  # evaluated and recorded (copied into MLflow if tracking.log_model): not kept here
        shutil.rmtree(simulated.model_dir, ignore_errors=True)
    return metrics


def _check_privacy(config: RunConfig, method: Method) -> None:
    """``privacy``: the method's uploads can be clipped and noised, and the run spends at most
    ``privacy.target_epsilon`` (:mod:`fedbt.federated.privacy`, :mod:`fedbt.privacy_accounting`)."""
    if config.privacy is None:
        return
    from fedbt.federated.privacy import check_method
    from fedbt.privacy_accounting import check_target

    check_method(method, config.privacy)
    fed = config.federation
    check_target(config.privacy, fed.clients, fed.fraction, fed.rounds)


def _privacy_summary(config: RunConfig, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the run spent: epsilon at delta after its last round (None: infinite, no noise), and the settings and
    the accounting that state it."""
    if config.privacy is None:
        return None
    from fedbt.privacy_accounting import sample_size

    fed = config.federation
    return dataclasses.asdict(config.privacy) | {
        "epsilon": records[-1].get("epsilon"),
        "accountant": "dp-accounting RDP, sampling without replacement, replace-one, noise multiplier sigma / 2",
        "sampled_per_round": sample_size(fed.clients, fed.fraction),
        "clients": fed.clients,
        "rounds": fed.rounds,
    }


def _refuse_over_budget(config: RunConfig, method: Method) -> None:
    """``federation.budget_policy: refuse``: fail before any training when a client's plan (shrunk if the method
    can) exceeds its tier's ``memory_mb`` (a method that pools the clients trains in one place: no tiers)."""
    from fedbt.federated.tiers import deal
    from fedbt.memory import check_budgets

    fed = config.federation
    if fed.budget_policy != "refuse" or not fed.tiers:
        return
    if len(method.arrange_clients([[k] for k in range(fed.clients)])) != fed.clients:
        return
    dealt = deal(method.tiers, fed.clients, config.seed)
    check_budgets(method, dealt, fed.rounds, memory_settings(config, method.arch))


def _tier_summary(ledger, method: Method) -> dict[str, Any]:
    """The ledger's costs per resource tier, with a warning for each memory budget a tier's clients exceeded."""
    summary = ledger.tier_summary(method.tiers)
    measures = {
        "estimate_exceeds_budget": ("max_memory_estimate_mb", "memory estimate of a client plan (fedbt.memory)"),
        "state_exceeds_budget": ("max_state_mb", "training state (parameters, gradients, optimizer)"),
        "peak_memory_exceeds_budget": ("max_peak_memory_mb", "peak memory of the training process"),
    }
    for name, tier in summary.items():
        for flag, (measure, what) in measures.items():
            if tier[flag]:
                log.warning(
                    "tier %s: %s %.1f MB exceeds its budget of %.1f MB",
                    name,
                    what,
                    tier[measure],
                    tier["memory_budget_mb"],
                )
    return summary


def _timing_summary(metrics: dict[str, Any], rows: list, timing) -> None:
    """A timed run's ``timing`` (the device model, simulated seconds, deadline misses) and each tier's share."""
    from fedbt.timing import run_summary, tier_summary

    metrics["timing"] = timing.describe() | run_summary(rows, metrics["rounds"])
    for name, tier in metrics.get("tiers", {}).items():
        tier.update(tier_summary(rows, name))


def execute(prepared: PreparedRun, fresh: bool = False, runtime: Runtime | None = None) -> dict[str, Any]:
    """Run a prepared run inside the job's live MLflow run (:mod:`fedbt.tracking`: RUNNING now, each round as it
    ends, then FINISHED, FAILED or KILLED): build the federation, simulate the rounds (where ``runtime`` says;
    default: in this process), evaluate, record. Returns the metrics."""
    from fedbt.data.provenance import run_datasets
    from fedbt.tracking import open_run

    started = time.perf_counter()
    out_dir = prepared.out_dir
    if fresh and out_dir.exists():
        shutil.rmtree(out_dir)  # its checkpoint and its MLflow run id with it
    with open_run(prepared.config, out_dir, run_key(prepared.config)) as tracker:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(to_yaml(prepared.config))
        federation = build_federation(prepared)
        tracker.log_inputs(run_datasets(prepared.config, federation.data))
        simulated = simulate(prepared, federation, runtime, [tracker.log_round])
        evaluation = evaluate(prepared, simulated.model_dir)
        return record(prepared, federation, simulated, evaluation, started, tracker)


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Flat scalar summary of a run (for MLflow and tables): costs, last round, downstream scores."""
    final = {f"cost.{k}": float(v) for k, v in metrics["costs"].items() if isinstance(v, int | float)}
    final.update({f"method.{k}": float(v) for k, v in metrics["method_report"].items()})
    timing = metrics.get("timing") or {}
    final.update({f"timing.{k}": float(v) for k, v in timing.items() if type(v) in (int, float)})
    last = metrics["rounds"][-1]
    final.update({f"last.{k}": float(v) for k, v in last.items() if k != "round" and isinstance(v, int | float)})
    privacy = metrics.get("privacy")
    if privacy and privacy["epsilon"] is not None:
        final["privacy.epsilon"] = float(privacy["epsilon"])
    selection = metrics.get("selection")
    if selection:
        final["finetune.best_round"] = float(selection["round"])
        final.update({f"finetune.test_{k}": float(v) for k, v in selection["test"].items()})
    evaluation = metrics.get("evaluation")
    if evaluation:
        for stat in ("mean", "std"):
            final.update({f"downstream.{k}_{stat}": float(v) for k, v in evaluation[stat].items()})
    return final


def round_evaluator(prepared: PreparedRun, federation: Federation):
    """Per-round scores of the global model: held-out MLM (MIM) loss on the test and the dev slice (pre-training,
    ``heldout_*`` and ``dev_heldout_*``), or dev and test metrics
    (fine-tuning; the final test score is taken at the best dev round, see :func:`best_round`). None when there
    is nothing to score."""
    from fedbt.training import loop

    config, data, device = prepared.config, federation.data, federation.setup.device
    eval_sets = {name: examples for name, examples in data.eval_sets.items() if len(examples)}
    if not eval_sets:
        return None
    objective = prepared.objective.build(
        data.processor, prepared.objective_settings(padding="dynamic", masked_only=True)
    )
    batch_size = max(config.local.batch_size, 32)
    if config.scenario == "pretrain":

        def heldout_loss(model) -> dict[str, float]:
            return {  # heldout_mlm_loss (the reported test slice) and dev_heldout_mlm_loss (what grids choose on)
                f"{name}_{config.local.objective}_loss": loop.eval_loss(
                    model, objective, examples, batch_size, device, config.seed
                )
                for name, examples in eval_sets.items()
            }

        return heldout_loss

    def task_scores(model) -> dict[str, float]:
        scores = {}
        for split, examples in eval_sets.items():
            predictions = loop.predict(model, objective, examples, batch_size, device)
            scores.update({f"{split}_{k}": v for k, v in objective.score(data.task, examples, predictions).items()})
        return scores

    return task_scores


def majority_scores(prepared: PreparedRun, federation: Federation) -> dict[str, float] | None:
    """The test metrics of the majority-class baseline (every test example gets the clients' most frequent
    training label): the floor a fine-tuning score must clear to mean anything. None without a test split."""
    data = federation.data
    test = data.eval_sets.get("test")
    if not test:
        return None
    train = [example for client in data.clients for example in client]
    return prepared.objective.score(data.task, test, prepared.objective.majority_predictions(train, test))


def selected_round(records: list[dict[str, Any]], primary: str) -> int | None:
    """The round federated fine-tuning reports, saves and hands on: the best dev ``primary`` score (earliest on
    ties; test never takes part in the choice); None when no round has a dev score."""
    key = f"dev_{primary}"
    scored = [r for r in records if key in r]
    if not scored:
        return None
    return max(scored, key=lambda r: r[key])["round"]  # max keeps the earliest of equal scores


def best_round(records: list[dict[str, Any]], primary: str) -> dict[str, Any] | None:
    """Federated fine-tuning's result: the dev and test scores of :func:`selected_round`."""
    chosen = selected_round(records, primary)
    if chosen is None:
        return None
    best = next(r for r in records if r["round"] == chosen)
    pick = {"round": best["round"], "primary": primary}
    for split in ("dev", "test"):
        pick[split] = {k.removeprefix(f"{split}_"): v for k, v in best.items() if k.startswith(f"{split}_")}
    return pick
