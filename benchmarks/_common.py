"""Shared set-up of the benchmarks: offline env, threads, MiniLM with tokenised shipped text, or a ViT with the
shipped CIFAR-10 images."""

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
    from fedbt.training.objectives import get_objective

    if threads:
        torch.set_num_threads(threads)
    model_config = ModelConfig(source="minilm", max_length=max_length)
    tokenizer = load_tokenizer(model_config)
    spec = get_task(task)
    train = load_task(task, "data")["train"].select(range(examples))
    model = load_model(model_config, "classification", seed=0, num_labels=len(spec.labels))
    return model, tokenizer, get_objective(spec.kind).encode(train, tokenizer, max_length)


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def vit_and_images(arch: str, head: str, examples: int, threads: int | None = None):
    """(ViT with random weights of shape ``arch`` and ``head``, its image processor, the first ``examples``
    CIFAR-10 train images with labels)."""
    from fedbt.data.images import load_image_corpus
    from fedbt.models import load_processor
    from fedbt.training.vision import image_examples

    if threads:
        torch.set_num_threads(threads)
    model_config = ModelConfig(source=f"scratch:{arch}")
    pool = load_image_corpus("cifar10", "data")
    model = load_model(model_config, head, seed=0, num_labels=10 if head == "image_classification" else None)
    return model, load_processor(model_config), image_examples(pool.images[:examples], pool.labels[:examples])
