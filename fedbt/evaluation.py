"""Downstream evaluation: centralised fine-tuning of a (global) model on a task (classification, NER, or image
classification).

For each seed the whole model is fine-tuned on the task's train split; after every epoch the dev and test
splits are scored, and the seed reports the test scores of the epoch with the best dev score on the task's
primary metric (ties go to the earliest epoch; test never takes part in the choice). The result holds the
per-seed scores and their mean and standard deviation over seeds.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from fedbt.config import DataConfig, EvaluationConfig, ModelConfig
from fedbt.data.run_data import task_examples
from fedbt.data.tasks import get_task
from fedbt.models import load_model, load_model_from_dir, load_processor, sequence_length
from fedbt.seeding import derive_seed
from fedbt.training.loop import adamw, predict, resolve_device, steps_for, train
from fedbt.training.objectives import ObjectiveSettings, get_objective

SOURCE = "source"
"""``model_dir`` value meaning "the model config's source, without further training" (the reference)."""

WEIGHT_DECAY = 0.01


def score(task, examples, predictions) -> dict[str, float]:
    """The task's metrics for ``predictions`` of ``examples`` (the objective of the task's kind scores them)."""
    return get_objective(task.kind).score(task, examples, predictions)


def finetune_and_score(
    model_dir: str | Path,
    task: str,
    eval_config: EvaluationConfig,
    model_config: ModelConfig,
    data_dir: str | Path = "data",
    device: str = "auto",
    tokenizer=None,
    data: DataConfig | None = None,
    sources=None,
) -> dict:
    """Fine-tune the model in ``model_dir`` (or ``"source"``: ``model_config.source``) on ``task`` once per
    seed of ``eval_config`` and score it by the test score at the best dev epoch.

    Returns ``{"task", "metrics", "primary", "seeds": [{"seed", "best_epoch", "dev", "test", "per_epoch",
    "seconds"}, ...], "mean", "std"}``; epochs count from 1, ``mean``/``std`` are over the seeds' test
    scores (sample std, 0.0 for a single seed). ``tokenizer`` is the text tokenizer or image processor (default:
    that of ``model_config``). ``data`` gives the data and cache folders (default: ``data_dir`` and the defaults);
    ``sources`` the run config's declared data sets.
    """
    spec = get_task(task, key="evaluation.task", sources=sources)
    data = data or DataConfig(data_dir=str(data_dir))
    tokenizer = tokenizer if tokenizer is not None else load_processor(model_config)
    limits = {
        "train": eval_config.max_train_examples,
        "dev": eval_config.max_eval_examples,
        "test": eval_config.max_eval_examples,
    }
    objective_type = get_objective(spec.kind, key="evaluation.task")
    examples = task_examples(spec, tokenizer, model_config.max_length, limits, data, objective_type, sources)
    head = spec.kind
    torch_device = resolve_device(device)
    primary = spec.scored_metrics[0]
    steps_per_epoch = steps_for(len(examples["train"]), eval_config.batch_size, 1, None)

    seeds = []
    for seed in eval_config.seeds:
        start = time.perf_counter()
        if str(model_dir) == SOURCE:
            model = load_model(model_config, head, seed, num_labels=len(spec.labels))
        else:
            model = load_model_from_dir(model_dir, head, seed, num_labels=len(spec.labels))
        model.to(torch_device)
        patches = sequence_length(model.config, model_config.max_length) - 1
        settings = ObjectiveSettings(max_length=model_config.max_length, patches=patches)
        objective = objective_type.build(tokenizer, settings)
        generator = torch.Generator().manual_seed(seed)
        optimizer = adamw(model, eval_config.lr, WEIGHT_DECAY)  # one optimizer across all epochs
        per_epoch = []
        for epoch in range(1, eval_config.epochs + 1):
            torch.manual_seed(derive_seed(seed, epoch))  # a fresh dropout stream per epoch
            train(
                model,
                objective,
                examples["train"],
                steps=steps_per_epoch,
                batch_size=eval_config.batch_size,
                lr=eval_config.lr,
                weight_decay=WEIGHT_DECAY,
                generator=generator,
                device=torch_device,
                optimizer=optimizer,
            )
            scores = {
                split: score(
                    spec,
                    examples[split],
                    predict(model, objective, examples[split], eval_config.batch_size, torch_device),
                )
                for split in ("dev", "test")
            }
            per_epoch.append({"epoch": epoch, **scores})
        best = max(per_epoch, key=lambda row: row["dev"][primary])  # max keeps the earliest of equal scores
        seeds.append(
            {
                "seed": seed,
                "best_epoch": best["epoch"],
                "dev": best["dev"],
                "test": best["test"],
                "per_epoch": per_epoch,
                "seconds": time.perf_counter() - start,
            }
        )
        del model  # free it before the next seed's copy is loaded

    tests = {metric: [s["test"][metric] for s in seeds] for metric in spec.scored_metrics}
    return {
        "task": spec.name,
        "metrics": list(spec.scored_metrics),
        "primary": primary,
        "seeds": seeds,
        "mean": {metric: statistics.mean(values) for metric, values in tests.items()},
        "std": {metric: statistics.stdev(values) if len(values) > 1 else 0.0 for metric, values in tests.items()},
    }
