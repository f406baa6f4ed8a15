"""The data layer's one call for a run: everything a federated run reads, from the config.

:func:`load_run_data` gives the processor (tokenizer or image processor), the clients' examples (views into the
token cache, indexed by the shared partition file), the per-round evaluation sets (held-out corpus sentences or
images; the task's dev and test subsets) and the scored task. :func:`task_examples` gives the downstream
evaluation its splits the same way. Text is read from the token cache (:mod:`fedbt.data.tokens`), built on first
use; images are held in memory.

Subsets: pre-training takes the corpus's first ``max_examples + dev_examples + heldout_examples`` sentences and
holds out the last ``dev_examples + heldout_examples`` of them: a dev slice (``dev_heldout``, what a grid chooses
on), then the reported test slice (``heldout``); images: the first ``heldout_examples`` dev images are the test
slice, the next ``dev_examples`` the dev slice. Fine-tuning takes
``max_examples`` train, ``heldout_examples`` dev and ``evaluation.max_eval_examples`` test rows, each by the one
seeded subset rule (:func:`fedbt.data.tasks.subset_rows`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedbt.config import DataConfig, ModelConfig, RunConfig
from fedbt.data.corpus import CORPORA, CorpusSpec, get_corpus, iter_grouped
from fedbt.data.partition import Partition, load_or_create_partition
from fedbt.data.sources import fingerprint, is_hub, read_upstream, slug
from fedbt.data.tasks import TASKS, TaskSpec, get_task, load_task, subset, subset_rows
from fedbt.data.tokens import Examples, cache_key, open_or_build, tokenize_sentences, tokenizer_fingerprint


@dataclass
class RunData:
    """What a run trains and scores on."""

    processor: Any
    clients: list[Sequence[dict]]
    eval_sets: dict[str, Sequence[dict]]
    """Scored every round: ``heldout`` (the test slice) and ``dev_heldout`` (pre-training), or ``dev`` and
    ``test`` (fine-tuning)."""
    task: TaskSpec | None
    """The fine-tuned task (None in pre-training)."""
    partition: Partition
    dataset_id: str
    pool_size: int


def load_run_data(config: RunConfig, model_config: ModelConfig, objective) -> RunData:
    """Load, tokenise (once, cached), subset and partition the run's data (see the module docstring)."""
    from fedbt.models import load_processor

    processor = load_processor(model_config)
    data = config.data
    groups = None
    if config.scenario == "pretrain":
        pool, eval_sets, task = *_corpus_data(config, processor, objective), None
        if isinstance(pool, Examples) and get_corpus(data.corpus, "data.corpus", config.sources).group_column:
            groups, pool_labels = pool.labels, None
        else:
            pool_labels = _labels(pool)
        dataset_id = f"corpus-{data.corpus}" if data.corpus in CORPORA else f"corpus-{slug(data.corpus)}"
    else:
        task = get_task(data.task, "data.task", config.sources)
        limits = {"train": data.max_examples, "dev": data.heldout_examples, "test": config.evaluation.max_eval_examples}
        splits = task_examples(task, processor, model_config.max_length, limits, data, objective, config.sources)
        pool, eval_sets = splits.pop("train"), splits
        pool_labels = _labels(pool)
        dataset_id = f"task-{data.task}" if data.task in TASKS else f"task-{slug(data.task)}"
    fed = config.federation
    partition = load_or_create_partition(
        dataset_id,
        len(pool),
        fed.clients,
        fed.partition.scheme,
        config.seed,
        data.partition_dir,
        labels=pool_labels,
        alpha=fed.partition.alpha,
        min_size=fed.partition.min_size,
        groups=groups,
        papers_per_client=fed.partition.papers_per_client,
    )
    clients = [_select(pool, indices) for indices in partition.clients]
    return RunData(processor, clients, eval_sets, task, partition, dataset_id, len(pool))


def _select(examples: Sequence[dict], rows: Sequence[int]) -> Sequence[dict]:
    return examples.select(rows) if isinstance(examples, Examples) else [examples[i] for i in rows]


def _labels(pool: Sequence[dict]) -> list[int] | None:
    if isinstance(pool, Examples):
        return pool.labels
    if pool and "label" in pool[0]:
        return [int(e["label"]) for e in pool]
    return None


def _corpus_data(config: RunConfig, processor, objective) -> tuple[Sequence[dict], dict[str, Sequence[dict]]]:
    data = config.data
    spec = get_corpus(data.corpus, "data.corpus", config.sources)
    if spec.kind == "image":
        from fedbt.data.images import load_image_splits
        from fedbt.training.vision import image_examples

        data_set, part = spec.image_part
        parts = load_image_splits(data_set, data.data_dir, "data.corpus")
        images = parts[part]
        count = len(images) if data.max_examples is None else min(data.max_examples, len(images))
        test, dev = heldout_slices(len(parts["dev"].images), data.heldout_examples, data.dev_examples)
        held = {
            "heldout": image_examples(parts["dev"].images[test]),
            "dev_heldout": image_examples(parts["dev"].images[dev]),
        }
        return image_examples(images.images[:count], images.labels[:count]), held
    sentences = corpus_tokens(spec, processor, config.model.max_length, data)
    train, dev, test = corpus_slices(len(sentences), data.max_examples, data.dev_examples, data.heldout_examples)
    return sentences.select(train), {"heldout": sentences.select(test), "dev_heldout": sentences.select(dev)}


def corpus_slices(total: int, max_examples: int | None, dev: int, test: int) -> tuple[range, range, range]:
    """The training, dev and test sentences of a corpus of ``total``: its first ``max_examples + dev + test``
    (all without ``max_examples``) in that order; a short corpus shrinks training first, then dev."""
    used = total if max_examples is None else min(total, max_examples + dev + test)
    test_start = max(used - test, 0)
    dev_start = max(test_start - dev, 0)
    return range(dev_start), range(dev_start, test_start), range(test_start, used)


def heldout_slices(total: int, test: int, dev: int) -> tuple[slice, slice]:
    """The test and dev images of the image pool's dev split: its first ``test``, then the next ``dev``."""
    test_end = min(test, total)
    return slice(0, test_end), slice(test_end, min(test_end + dev, total))


def corpus_tokens(spec: CorpusSpec, tokenizer, max_length: int, data: DataConfig) -> Examples:
    """Every sentence of a text corpus, tokenised (from the cache, built on first use)."""
    upstream = (
        read_upstream(spec.location, data.data_dir, "data.corpus", kind="corpus", revision=spec.revision)
        if (is_hub(spec.location))
        else None
    )
    source = fingerprint(spec.declaration(), spec.location, data.data_dir, upstream)
    key = cache_key(source, tokenizer_fingerprint(tokenizer), max_length, "sentences")

    def build():
        rows = iter_grouped(spec, data.data_dir)
        if spec.group_column is None:
            yield "train", tokenize_sentences((sentence for sentence, _ in rows), tokenizer, max_length)
        else:  # the group (e.g. paper) of each sentence is kept as its label, for the papers partition scheme
            yield "train", tokenize_sentences(rows, tokenizer, max_length)

    cache = open_or_build(data.cache_dir, spec.name, key, build, {"kind": "corpus", "max_length": max_length})
    return Examples(cache.split("train"))


def task_examples(
    task: TaskSpec,
    processor,
    max_length: int,
    limits: Mapping[str, int | None],
    data: DataConfig,
    objective,
    sources=None,
) -> dict[str, Sequence[dict]]:
    """The examples of a task's splits (``limits``: split -> at most that many rows, by the subset rule), encoded
    by ``objective`` (the one that fine-tunes the task): text from the token cache, images in memory."""
    if objective.modality == "image":
        splits = load_task(task, data.data_dir, sources=sources)
        return {
            split: objective.encode(subset(splits[split], limit), processor, max_length)
            for split, limit in limits.items()
        }
    upstream = (
        read_upstream(task.location, data.data_dir, "data.task", kind=task.kind, revision=task.revision)
        if (is_hub(task.location))
        else None
    )
    source = fingerprint(task.declaration(), task.location, data.data_dir, upstream)
    key = cache_key(source, tokenizer_fingerprint(processor), max_length, objective.name)

    def build():
        splits = load_task(task, data.data_dir, sources=sources)
        for split in splits:
            yield split, objective.encode(splits[split], processor, max_length)

    cache = open_or_build(data.cache_dir, task.name, key, build, {"kind": task.kind, "max_length": max_length})
    selected = {}
    for split, limit in limits.items():
        examples = Examples(cache.split(split))
        selected[split] = examples.select(subset_rows(len(examples), limit))
    return selected
