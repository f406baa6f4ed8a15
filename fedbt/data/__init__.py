"""Data layer (offline, from ``data/``): downstream tasks, unlabeled domain corpora and client partitions."""

from fedbt.data.corpus import CORPORA, CorpusSpec, load_corpus, split_sentences
from fedbt.data.partition import SCHEMES, Partition, load_or_create_partition, partition_indices
from fedbt.data.tasks import TASKS, TaskSpec, get_task, load_task

__all__ = [
    "CORPORA",
    "SCHEMES",
    "TASKS",
    "CorpusSpec",
    "Partition",
    "TaskSpec",
    "get_task",
    "load_corpus",
    "load_or_create_partition",
    "load_task",
    "partition_indices",
    "split_sentences",
]
