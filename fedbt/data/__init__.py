"""Data layer (offline, from ``data/``): downstream tasks (classification, NER and image classification), unlabeled
domain corpora (text; images in :mod:`fedbt.data.images`) and client partitions."""

from fedbt.data.corpus import CORPORA, CorpusSpec, load_corpus, split_sentences
from fedbt.data.ner import TaggedSentence, bio_labels, read_conll, read_standoff, standoff_to_bio, validate_bio
from fedbt.data.partition import SCHEMES, Partition, load_or_create_partition, partition_indices
from fedbt.data.tasks import TASKS, TaskSpec, get_task, load_task

__all__ = [
    "CORPORA",
    "SCHEMES",
    "TASKS",
    "CorpusSpec",
    "Partition",
    "TaggedSentence",
    "TaskSpec",
    "bio_labels",
    "get_task",
    "load_corpus",
    "load_or_create_partition",
    "load_task",
    "partition_indices",
    "read_conll",
    "read_standoff",
    "split_sentences",
    "standoff_to_bio",
    "validate_bio",
]
