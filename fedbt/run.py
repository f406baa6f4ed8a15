"""One federated run from a config, one way through:

config -> data -> partition (shared index file) -> tokenised client data -> simulator (rounds, ledger,
checkpoints) -> run directory (``config.yaml``, ``ledger.csv``, ``metrics.json``, ``model/``) ->
downstream evaluation -> MLflow run.

Everything that can be wrong with the config (keys, method options, task and corpus names, layer
indices) is checked in :func:`prepare` before any weights or data are loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedbt.config import IMAGE_OBJECTIVES, OBJECTIVES, ModelConfig, RunConfig, to_yaml
from fedbt.federated.method import Method, create_method, get_method, load_plugins
from fedbt.models import is_vision, load_model, load_processor, meta_model, model_config_for, sequence_length

if TYPE_CHECKING:
    from fedbt.data.partition import Partition
    from fedbt.federated.simulator import Runtime, SimulationSetup

log = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    """A validated run: the config, its method instance and the facts derived from it."""

    config: RunConfig
    method: Method
    head: str
    num_labels: int | None
    model_config: ModelConfig
    out_dir: Path


def _task_labels(config: RunConfig) -> int | None:
    """Check the task names; for fine-tuning, the number of labels (and that the objective fits the task)."""
    from fedbt.data.tasks import get_task
    from fedbt.errors import ConfigError

    if config.evaluation.task is not None:
        get_task(config.evaluation.task, key="evaluation.task")
    if config.scenario != "finetune":
        return None
    from fedbt.evaluation import HEAD_OF_KIND

    task = get_task(config.data.task, key="data.task")
    if config.local.objective != HEAD_OF_KIND[task.kind]:
        raise ConfigError(
            "local.objective",
            f"task {task.name!r} is a {task.kind} task: set local.objective={HEAD_OF_KIND[task.kind]}",
        )
    return len(task.labels)


def _check_modality(config: RunConfig, hf_config) -> None:
    """Text models train text objectives on text data, image models image objectives on image data."""
    from fedbt.data.images import IMAGE_CORPORA
    from fedbt.errors import ConfigError

    vision = is_vision(hf_config)
    kind = "an image" if vision else "a text"
    allowed = IMAGE_OBJECTIVES if vision else tuple(o for o in OBJECTIVES if o not in IMAGE_OBJECTIVES)
    if config.local.objective not in allowed:
        raise ConfigError(
            "local.objective",
            f"model.source {config.model.source!r} is {kind} model; allowed objectives: {', '.join(allowed)}",
        )
    if config.scenario == "pretrain" and (config.data.corpus in IMAGE_CORPORA) != vision:
        raise ConfigError("data.corpus", f"corpus {config.data.corpus!r} does not suit {kind} model")


def prepare(config: RunConfig) -> PreparedRun:
    """Validate everything that does not need weights or data: plugins, names, method options, and that the
    model, the objective and the data are of one modality (text or image)."""
    from fedbt.data.corpus import CORPORA
    from fedbt.data.images import IMAGE_CORPORA
    from fedbt.errors import ConfigError

    load_plugins(config.plugins)
    corpora = [*CORPORA, *IMAGE_CORPORA]
    if config.scenario == "pretrain" and config.data.corpus not in corpora:
        raise ConfigError("data.corpus", f"unknown corpus {config.data.corpus!r}; known corpora: {', '.join(corpora)}")
    num_labels = _task_labels(config)
    head = config.local.objective  # the objective names the model head
    source = get_method(config.method.name).starting_model(config.method.options, config.model.source)
    model_config = dataclasses.replace(config.model, source=source)
    hf_config = model_config_for(model_config, num_labels)
    _check_modality(config, hf_config)
    from fedbt.federated.tiers import tiers_from_config

    method = create_method(
        config.method.name,
        meta_model(hf_config, head),
        config.federation.rounds,
        config.seed,
        config.method.options,
        config.scenario,
        tiers_from_config(config.federation.tiers),
    )
    return PreparedRun(config, method, head, num_labels, model_config, config.resolved_out_dir())


def fingerprint(config: RunConfig) -> str:
    """Hash of what determines a run's results: everything but the output place, tracking and names (the
    evaluation settings included: a resumed run must score its rounds as the interrupted one did)."""
    relevant = dataclasses.asdict(config)
    for key in ("out_dir", "tracking", "name", "study"):
        relevant.pop(key)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def run_key(config: RunConfig) -> str:
    """The identity of a run in MLflow: study, name, method, data and seed."""
    data = config.data.corpus if config.scenario == "pretrain" else config.data.task
    return f"{config.study}/{config.name}/{config.method.name}/{data}/seed{config.seed}"


# ----------------------------------------------------------------------------------------- data


def _examples(config: RunConfig, tokenizer) -> tuple[list[dict], dict[str, list[dict]], list[int] | None, str]:
    """Tokenised (training pool, per-round evaluation sets, labels for label-skew partitions, dataset id).

    Pre-training: the corpus's sentences, the last ``heldout_examples`` held out for the per-round MLM loss;
    an image corpus's images (with their labels, for label-skew partitions), the first ``heldout_examples``
    dev images held out for the per-round MIM loss. Fine-tuning: the task's train split (``max_examples``); its
    dev split (``heldout_examples``) and test split (``evaluation.max_eval_examples``, all by default) are scored
    every round; every subset is drawn by :func:`fedbt.data.tasks.subset`.
    """
    data, max_length = config.data, config.model.max_length
    if config.scenario == "pretrain" and config.local.objective == "mim":
        from fedbt.data.images import IMAGE_CORPORA, load_image_corpus, load_image_splits
        from fedbt.training.vision import image_examples

        pool = load_image_corpus(data.corpus, data.data_dir)
        count = len(pool) if data.max_examples is None else min(data.max_examples, len(pool))
        heldout = load_image_splits(IMAGE_CORPORA[data.corpus][0], data.data_dir)["dev"]
        labels = pool.labels[:count].tolist()
        return (
            image_examples(pool.images[:count]),
            {"heldout": image_examples(heldout.images[: data.heldout_examples])},
            labels,
            f"corpus-{data.corpus}",
        )
    if config.scenario == "pretrain":
        from fedbt.data.corpus import load_corpus

        limit = None if data.max_examples is None else data.max_examples + data.heldout_examples
        sentences = load_corpus(data.corpus, data.data_dir, max_examples=limit)
        cut = len(sentences) - data.heldout_examples
        encoded = [
            {"input_ids": ids} for ids in tokenizer(sentences, truncation=True, max_length=max_length)["input_ids"]
        ]
        return encoded[:cut], {"heldout": encoded[cut:]}, None, f"corpus-{data.corpus}"
    from fedbt.data.tasks import get_task, load_task, subset
    from fedbt.evaluation import tokenize_task

    spec = get_task(data.task)
    splits = load_task(data.task, data.data_dir)
    limits = {"train": data.max_examples, "dev": data.heldout_examples, "test": config.evaluation.max_eval_examples}
    subsets = {split: subset(splits[split], limit) for split, limit in limits.items()}
    labels = list(subsets["train"]["label"]) if spec.kind != "ner" else None
    tokenized = {split: tokenize_task(subset, tokenizer, max_length, spec.kind) for split, subset in subsets.items()}
    train = tokenized.pop("train")
    return train, tokenized, labels, f"task-{data.task}"


# ------------------------------------------------------------------------------------------ run


@dataclass
class Federation:
    """What a run trains, built from a prepared run: the clients' data, the objective, the starting global model."""

    setup: SimulationSetup
    global_model: nn.Module
    processor: Any
    eval_sets: dict[str, list[dict]]
    partition: Partition
    patches: int
    """Image patches per example (for MIM masking); unused by text models."""


def build_federation(prepared: PreparedRun) -> Federation:
    """Load the data, partition it, load the starting model (prepared by the method) and make the objective.

    Deterministic from the config: a Flower ClientApp builds the same federation as the server to train its
    share of the data on the same starting model.
    """
    from fedbt.data.partition import load_or_create_partition
    from fedbt.federated.simulator import SimulationSetup
    from fedbt.federated.tiers import deal
    from fedbt.training import loop
    from fedbt.training.objectives import make_objective

    config = prepared.config
    processor = load_processor(prepared.model_config)  # tokenizer or image processor
    examples, eval_sets, labels, dataset_id = _examples(config, processor)
    fed = config.federation
    partition = load_or_create_partition(
        dataset_id,
        len(examples),
        fed.clients,
        fed.partition.scheme,
        config.seed,
        config.data.partition_dir,
        labels=labels,
        alpha=fed.partition.alpha,
        min_size=fed.partition.min_size,
    )
    clients = [[examples[i] for i in indices] for indices in partition.clients]

    device = loop.resolve_device(config.local.device)
    torch.set_float32_matmul_precision("high")  # TF32 on CUDA; no effect on CPU
    local = config.local
    global_model = load_model(prepared.model_config, prepared.head, config.seed, prepared.num_labels)
    global_model = prepared.method.prepare_model(global_model).to(device)
    patches = sequence_length(global_model.config, config.model.max_length) - 1
    objective = make_objective(
        local.objective,
        processor,
        mlm_probability=local.mlm_probability,
        masked_only=local.masked_only_logits,
        pad_to=config.model.max_length,
        mask_ratio=local.mim_mask_ratio,
        patches=patches,
    )
    setup = SimulationSetup(
        clients=clients,
        objective=objective,
        local=local,
        rounds=fed.rounds,
        fraction=fed.fraction,
        aggregation=fed.aggregation,
        seed=config.seed,
        device=device,
        seq_len=sequence_length(global_model.config, config.model.max_length),
        tiers=deal(prepared.method.tiers, fed.clients, config.seed) if fed.tiers else (),
    )
    return Federation(setup, global_model, processor, eval_sets, partition, patches)


def execute(prepared: PreparedRun, fresh: bool = False, runtime: Runtime | None = None) -> dict[str, Any]:
    """Run the rounds (resuming if possible), save the run directory, evaluate, all inside the job's live MLflow
    run (:mod:`fedbt.tracking`: RUNNING now, each round as it ends, then FINISHED, FAILED or KILLED). Returns
    metrics.

    ``runtime`` is where clients train (default: in this process; :mod:`fedbt.flower`: Flower ClientApps).
    """
    from fedbt.tracking import open_run

    if fresh and prepared.out_dir.exists():
        shutil.rmtree(prepared.out_dir)  # its checkpoint and its MLflow run id with it
    with open_run(prepared.config, prepared.out_dir, run_key(prepared.config)) as tracker:
        return _execute(prepared, tracker, runtime)


def _execute(prepared: PreparedRun, tracker, runtime: Runtime | None) -> dict[str, Any]:
    from fedbt.data.provenance import run_datasets
    from fedbt.federated.simulator import Simulator
    from fedbt.ledger import Ledger

    config, out_dir = prepared.config, prepared.out_dir
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(to_yaml(config))

    federation = build_federation(prepared)
    tracker.log_inputs(run_datasets(config, federation.partition))
    method, global_model, processor = prepared.method, federation.global_model, federation.processor
    device, local = federation.setup.device, config.local
    round_eval = _round_evaluator(config, processor, federation.eval_sets, device, federation.patches)
    ledger = Ledger(out_dir / "ledger.csv")
    select = None
    if config.scenario == "finetune":
        from fedbt.data.tasks import get_task

        primary = get_task(config.data.task).metrics[0]
        select = functools.partial(selected_round, primary=primary)
    checkpoints = out_dir / "checkpoint"
    simulator = Simulator(
        global_model, method, federation.setup, ledger, checkpoints, fingerprint(config), round_eval, select, runtime
    )
    simulator.observers.append(tracker.log_round)  # each round reaches MLflow as it ends
    records = simulator.run()
    simulator.restore_selected()  # fine-tuning: the model of the reported round is the one saved
    model_dir = out_dir / "model"
    method.deploy(global_model).save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    federated_seconds = time.perf_counter() - started

    evaluation = None
    if config.evaluation.task is not None:
        from fedbt.evaluation import finetune_and_score

        evaluation = finetune_and_score(
            model_dir,
            config.evaluation.task,
            config.evaluation,
            prepared.model_config,
            config.data.data_dir,
            local.device,
        )
    partition = federation.partition
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
        "runtime": simulator.runtime.report(),
        "rounds": records,
        "plan_sha256": hashlib.sha256("".join(r["plan_sha256"] for r in records).encode()).hexdigest(),
        "costs": ledger.summary(),
        "evaluation": evaluation,
        "federated_seconds": federated_seconds,
        "total_seconds": time.perf_counter() - started,
    }
    if select is not None:
        metrics["selection"] = best_round(records, primary)
    if config.federation.tiers:
        metrics["tiers"] = _tier_summary(ledger, method)
    metrics["final"] = final_metrics(metrics)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)  # the run is complete; model/ holds its state
    tags = {"fedbt.device": str(device), "fedbt.runtime": simulator.runtime.name}
    run_id = tracker.finish(metrics["final"], tags, model_dir)
    if run_id is not None:
        metrics["mlflow_run_id"] = run_id
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def _tier_summary(ledger, method: Method) -> dict[str, Any]:
    """The ledger's costs per resource tier, with a warning for each memory budget a tier's clients exceeded."""
    summary = ledger.tier_summary(method.tiers)
    measures = {
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


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Flat scalar summary of a run (for MLflow and tables): costs, last round, downstream scores."""
    final = {f"cost.{k}": float(v) for k, v in metrics["costs"].items() if isinstance(v, int | float)}
    final.update({f"method.{k}": float(v) for k, v in metrics["method_report"].items()})
    last = metrics["rounds"][-1]
    final.update({f"last.{k}": float(v) for k, v in last.items() if k != "round" and isinstance(v, int | float)})
    selection = metrics.get("selection")
    if selection:
        final["finetune.best_round"] = float(selection["round"])
        final.update({f"finetune.test_{k}": float(v) for k, v in selection["test"].items()})
    evaluation = metrics.get("evaluation")
    if evaluation:
        for stat in ("mean", "std"):
            final.update({f"downstream.{k}_{stat}": float(v) for k, v in evaluation[stat].items()})
    return final


def _round_evaluator(
    config: RunConfig, processor, eval_sets: dict[str, list[dict]], device: torch.device, patches: int
):
    """Per-round scores of the global model: held-out MLM (MIM) loss (pre-training), or dev and test metrics
    (fine-tuning; the final test score is taken at the best dev round, see :func:`best_round`)."""
    from fedbt.training import loop
    from fedbt.training.objectives import make_objective

    eval_sets = {name: examples for name, examples in eval_sets.items() if examples}
    if not eval_sets:
        return None
    objective = make_objective(
        config.local.objective,
        processor,
        mlm_probability=config.local.mlm_probability,
        masked_only=True,
        pad_to=None,
        mask_ratio=config.local.mim_mask_ratio,
        patches=patches,
    )
    batch_size = max(config.local.batch_size, 32)
    if config.scenario == "pretrain":

        def heldout_loss(model) -> dict[str, float]:
            loss = loop.eval_loss(model, objective, eval_sets["heldout"], batch_size, device, config.seed)
            return {f"heldout_{config.local.objective}_loss": loss}

        return heldout_loss

    from fedbt.data.tasks import get_task
    from fedbt.evaluation import score

    task = get_task(config.data.task)

    def task_scores(model) -> dict[str, float]:
        scores = {}
        for split, examples in eval_sets.items():
            predictions = loop.predict(model, objective, examples, batch_size, device)
            scores.update({f"{split}_{k}": v for k, v in score(task, examples, predictions).items()})
        return scores

    return task_scores


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
