"""One federated run from a config, one way through:

config -> data -> partition (shared index file) -> tokenised client data -> simulator (rounds, ledger,
checkpoints) -> run directory (``config.yaml``, ``ledger.csv``, ``metrics.json``, ``model/``) ->
downstream evaluation -> MLflow run.

Everything that can be wrong with the config (keys, method options, task and corpus names, layer
indices) is checked in :func:`prepare` before any weights or data are loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedbt.config import RunConfig, to_flat_dict, to_yaml
from fedbt.federated.method import Method, create_method, load_plugins
from fedbt.models import ModelArch, load_model, load_tokenizer, meta_model, model_config_for

log = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    """A validated run: the config, its method instance and the facts derived from it."""

    config: RunConfig
    method: Method
    head: str
    num_labels: int | None
    out_dir: Path


def _task_labels(config: RunConfig) -> int | None:
    from fedbt.data.tasks import get_task

    if config.evaluation.task is not None:
        get_task(config.evaluation.task, key="evaluation.task")
    if config.scenario == "finetune":
        return len(get_task(config.data.task, key="data.task").labels)
    return None


def prepare(config: RunConfig) -> PreparedRun:
    """Validate everything that does not need weights or data: plugins, names, method options."""
    from fedbt.data.corpus import CORPORA
    from fedbt.errors import ConfigError

    load_plugins(config.plugins)
    if config.scenario == "pretrain" and config.data.corpus not in CORPORA:
        raise ConfigError("data.corpus", f"unknown corpus {config.data.corpus!r}; known corpora: {', '.join(CORPORA)}")
    num_labels = _task_labels(config)
    head = config.local.objective  # the objective names the model head
    arch = ModelArch.from_model(meta_model(model_config_for(config.model, num_labels), head))
    method = create_method(
        config.method.name,
        arch,
        config.federation.rounds,
        config.seed,
        config.method.options,
        config.scenario,
    )
    return PreparedRun(config, method, head, num_labels, config.resolved_out_dir())


def fingerprint(config: RunConfig) -> str:
    """Hash of what determines the federated rounds (not the output place, tracking or evaluation)."""
    relevant = dataclasses.asdict(config)
    for key in ("out_dir", "tracking", "evaluation", "name", "study"):
        relevant.pop(key)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def run_key(config: RunConfig) -> str:
    """The identity of a run in MLflow: study, name, method, data and seed."""
    data = config.data.corpus if config.scenario == "pretrain" else config.data.task
    return f"{config.study}/{config.name}/{config.method.name}/{data}/seed{config.seed}"


# ----------------------------------------------------------------------------------------- data


def _training_texts(
    config: RunConfig,
) -> tuple[list[str], list[int] | None, list[str], list[int] | None, str]:
    """(train texts, train labels, held-out texts, held-out labels, dataset id) for the scenario."""
    data = config.data
    if config.scenario == "pretrain":
        from fedbt.data.corpus import load_corpus

        limit = None if data.max_examples is None else data.max_examples + data.heldout_examples
        sentences = load_corpus(data.corpus, data.data_dir, max_examples=limit)
        heldout = sentences[len(sentences) - data.heldout_examples :] if data.heldout_examples else []
        train = sentences[: len(sentences) - data.heldout_examples]
        return train, None, heldout, None, f"corpus-{data.corpus}"
    from fedbt.data.tasks import load_task

    splits = load_task(data.task, data.data_dir)
    train = splits["train"]
    if data.max_examples is not None:
        train = train.select(range(min(data.max_examples, len(train))))
    dev = splits["dev"].select(range(min(data.heldout_examples or len(splits["dev"]), len(splits["dev"]))))
    return (
        list(train["text"]),
        list(train["label"]),
        list(dev["text"]),
        list(dev["label"]),
        f"task-{data.task}",
    )


def _tokenize(tokenizer, texts: list[str], labels: list[int] | None, max_length: int) -> list[dict]:
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    if labels is None:
        return [{"input_ids": ids} for ids in encoded]
    return [{"input_ids": ids, "label": label} for ids, label in zip(encoded, labels, strict=True)]


# ------------------------------------------------------------------------------------------ run


def execute(prepared: PreparedRun, fresh: bool = False) -> dict[str, Any]:
    """Run the rounds (resuming if possible), save the run directory, evaluate, track. Returns metrics."""
    from fedbt.data.partition import load_or_create_partition
    from fedbt.federated.simulator import SimulationSetup, Simulator
    from fedbt.ledger import Ledger
    from fedbt.training import loop
    from fedbt.training.objectives import make_objective

    config, out_dir = prepared.config, prepared.out_dir
    started = time.perf_counter()
    if fresh and out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(to_yaml(config))

    train_texts, train_labels, heldout_texts, heldout_labels, dataset_id = _training_texts(config)
    fed = config.federation
    partition = load_or_create_partition(
        dataset_id,
        len(train_texts),
        fed.clients,
        fed.partition.scheme,
        config.seed,
        config.data.partition_dir,
        labels=train_labels,
        alpha=fed.partition.alpha,
        min_size=fed.partition.min_size,
    )
    tokenizer = load_tokenizer(config.model)
    examples = _tokenize(tokenizer, train_texts, train_labels, config.model.max_length)
    heldout = _tokenize(tokenizer, heldout_texts, heldout_labels, config.model.max_length)
    clients = [[examples[i] for i in indices] for indices in partition.clients]

    device = loop.resolve_device(config.local.device)
    torch.set_float32_matmul_precision("high")  # TF32 on CUDA; no effect on CPU
    local = config.local
    objective = make_objective(
        local.objective,
        tokenizer,
        mlm_probability=local.mlm_probability,
        masked_only=local.masked_only_logits,
        pad_to=config.model.max_length,
    )
    global_model = load_model(config.model, prepared.head, config.seed, prepared.num_labels).to(device)
    round_eval = _round_evaluator(config, tokenizer, heldout, device, prepared.num_labels)
    setup = SimulationSetup(
        clients=clients,
        objective=objective,
        local=local,
        rounds=fed.rounds,
        fraction=fed.fraction,
        aggregation=fed.aggregation,
        seed=config.seed,
        device=device,
        seq_len=config.model.max_length,
    )
    ledger = Ledger(out_dir / "ledger.csv")
    simulator = Simulator(
        global_model, prepared.method, setup, ledger, out_dir / "checkpoint", fingerprint(config), round_eval
    )
    records = simulator.run()
    model_dir = out_dir / "model"
    global_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    federated_seconds = time.perf_counter() - started

    evaluation = None
    if config.evaluation.task is not None:
        from fedbt.evaluation import finetune_and_score

        evaluation = finetune_and_score(
            model_dir,
            config.evaluation.task,
            config.evaluation,
            config.model,
            config.data.data_dir,
            local.device,
        )
    metrics = {
        "run_key": run_key(config),
        "name": config.name,
        "study": config.study,
        "scenario": config.scenario,
        "method": config.method.name,
        "method_options": prepared.method.options_dict(),
        "data": config.data.corpus if config.scenario == "pretrain" else config.data.task,
        "seed": config.seed,
        "device": str(device),
        "partition": {"path": str(partition.path), "sha256": partition.digest, "sizes": partition.sizes()},
        "rounds": records,
        "costs": ledger.summary(),
        "evaluation": evaluation,
        "federated_seconds": federated_seconds,
        "total_seconds": time.perf_counter() - started,
    }
    metrics["final"] = final_metrics(metrics)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)  # the run is complete; model/ holds its state
    if config.tracking.enabled:
        from fedbt.tracking import log_run, run_tags

        metrics["mlflow_run_id"] = log_run(
            config.tracking.uri,
            config.tracking.experiment or config.study,
            run_key(config),
            config.name,
            to_flat_dict(config),
            records,
            metrics["final"],
            run_tags(str(device)),
            out_dir,
        )
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Flat scalar summary of a run (for MLflow and tables): costs, last round, downstream scores."""
    final = {f"cost.{k}": float(v) for k, v in metrics["costs"].items() if isinstance(v, int | float)}
    last = metrics["rounds"][-1]
    final.update({f"last.{k}": float(v) for k, v in last.items() if k != "round" and isinstance(v, int | float)})
    evaluation = metrics.get("evaluation")
    if evaluation:
        for stat in ("mean", "std"):
            final.update({f"downstream.{k}_{stat}": float(v) for k, v in evaluation[stat].items()})
    return final


def _round_evaluator(config: RunConfig, tokenizer, heldout: list[dict], device: torch.device, num_labels):
    """Per-round score of the global model: held-out MLM loss (pre-training) or dev metrics (fine-tuning)."""
    from fedbt.training import loop
    from fedbt.training.objectives import make_objective

    if not heldout:
        return None
    objective = make_objective(
        config.local.objective,
        tokenizer,
        mlm_probability=config.local.mlm_probability,
        masked_only=True,
        pad_to=None,
    )
    batch_size = max(config.local.batch_size, 32)
    if config.scenario == "pretrain":

        def heldout_loss(model) -> dict[str, float]:
            return {"heldout_mlm_loss": loop.eval_loss(model, objective, heldout, batch_size, device, config.seed)}

        return heldout_loss

    from fedbt.data.tasks import get_task
    from fedbt.metrics import compute_metrics

    task = get_task(config.data.task)
    references = [e["label"] for e in heldout]

    def dev_scores(model) -> dict[str, float]:
        predictions = loop.predict(model, objective, heldout, batch_size, device).tolist()
        return {f"dev_{k}": v for k, v in compute_metrics(task.metrics, predictions, references).items()}

    return dev_scores
