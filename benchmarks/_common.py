"""Shared set-up of the benchmarks: offline env, threads, MiniLM, tokenised shipped corpus."""

from __future__ import annotations

import os

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402

from fedbt.config import ModelConfig  # noqa: E402
from fedbt.data.corpus import load_corpus  # noqa: E402
from fedbt.models import load_model, load_tokenizer  # noqa: E402


def minilm_and_corpus(max_length: int, examples: int, threads: int | None = None):
    """(MiniLM MLM model, tokenizer, tokenised CS-corpus sentences)."""
    if threads:
        torch.set_num_threads(threads)
    model_config = ModelConfig(source="minilm", max_length=max_length)
    tokenizer = load_tokenizer(model_config)
    texts = load_corpus("cs", "data", max_examples=examples)
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return load_model(model_config, "mlm", seed=0), tokenizer, [{"input_ids": ids} for ids in encoded]


def minilm_and_task(task: str, max_length: int, examples: int, threads: int | None = None):
    """(MiniLM sequence-classification model, tokenizer, tokenised first ``examples`` train rows of ``task``)."""
    from fedbt.data.tasks import get_task, load_task
    from fedbt.evaluation import tokenize_task

    if threads:
        torch.set_num_threads(threads)
    model_config = ModelConfig(source="minilm", max_length=max_length)
    tokenizer = load_tokenizer(model_config)
    spec = get_task(task)
    train = load_task(task, "data")["train"].select(range(examples))
    model = load_model(model_config, "classification", seed=0, num_labels=len(spec.labels))
    return model, tokenizer, tokenize_task(train, tokenizer, max_length, spec.kind)


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
