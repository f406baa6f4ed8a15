"""Unlabelled corpora for further pre-training: text, one sentence per example (the paper's setup), or images.

A corpus is a declaration (:class:`CorpusSpec`) read like every data set (:mod:`fedbt.data.sources`): a shipped
name, a name declared under a config's ``sources`` (``kind: corpus``), a local file or directory (``.txt``: one
document per line; ``.jsonl``/``.csv``/``.tsv``/``.parquet``: one document per row in column ``text``), or a hub
id ``hf:<id>[:<config>]`` (split ``train``). Each document is split into sentences by :func:`split_sentences`
(segtok, unless the declaration says its rows already are sentences), sentences of fewer than ``min_words`` words
(default :data:`MIN_WORDS`) are dropped, and order is kept.

The image corpora (``cifar10``, ``cifar10-central``) are parts of the shipped CIFAR-10 subset
(:mod:`fedbt.data.images`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from fedbt.data.sources import is_hub, looks_like_path, read_upstream, resolve_path, upstream_split
from fedbt.errors import ConfigError, DataError

if TYPE_CHECKING:
    from fedbt.config import SourceConfig

MIN_WORDS = 5
"""Sentences with fewer whitespace-separated words than this are dropped."""


@dataclass(frozen=True)
class CorpusSpec:
    """A corpus's declaration. ``kind`` is ``text`` or ``image`` (a part of a shipped image data set)."""

    name: str
    location: str
    description: str = ""
    kind: str = "text"
    column: str = "text"
    split: str = "train"
    segment: bool = True
    """Split each row (a document) into sentences; False when rows already are sentences."""
    min_words: int = MIN_WORDS
    revision: str | None = None
    image_part: tuple[str, str] | None = None
    """Image corpora: (image data set, part) of :mod:`fedbt.data.images`."""
    sizes: Mapping[str, int] = field(default_factory=dict)
    """Expected sentences (``train``), for estimates when the corpus is not on this machine."""
    group_column: str | None = None
    """A column grouping rows (e.g. the paper of each sentence, for the ``papers`` partition scheme)."""

    def declaration(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("description", "sizes")}


CORPORA: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in (
        CorpusSpec(
            "biology",
            "corpus_biology/craft_fulltext.txt",
            "CRAFT full-text PMC articles (mouse genomics), first 37 articles",
        ),
        CorpusSpec(
            "cs", "corpus_cs/cs_abstracts.txt", "computer-science paper abstracts (SciTLDR-A), first 1,367 abstracts"
        ),
        CorpusSpec("medicine", "corpus_medicine/pubmedqa_abstracts.txt", "PubMed abstracts from PubMedQA, first 879"),
        CorpusSpec(
            "sst2",
            "sst2/sentences.txt",
            "SST-2 movie-review sentences (GLUE train split), one per line: the general-domain corpus",
            segment=False,
        ),
        CorpusSpec("cifar10", "cifar10", "CIFAR-10 subset, train part", kind="image", image_part=("cifar10", "train")),
        CorpusSpec(
            "cifar10-4",
            "cifar10",
            "CIFAR-10 subset, first 4 classes, train part",
            kind="image",
            image_part=("cifar10-4", "train"),
        ),
        CorpusSpec(
            "cifar10-central",
            "cifar10",
            "CIFAR-10 subset, central part (starting models)",
            kind="image",
            image_part=("cifar10", "central"),
        ),
    )
}


def from_source(name: str, source: SourceConfig) -> CorpusSpec:
    """The corpus declared as ``sources.<name>`` (``kind: corpus``)."""
    if source.kind != "corpus":
        raise ConfigError(f"sources.{name}.kind", f"{name!r} is used as a corpus: set kind: corpus")
    return CorpusSpec(
        name=name,
        location=source.location,
        description=source.description,
        column=source.columns.get("text", "text"),
        split=source.splits.get("train", "train"),
        segment=source.segment,
        min_words=source.min_words,
        revision=source.revision,
        sizes=dict(source.sizes),
        group_column=source.columns.get("group"),
    )


def get_corpus(name: str, key: str = "data.corpus", sources: Mapping[str, SourceConfig] | None = None) -> CorpusSpec:
    """The declaration of corpus ``name`` (declared, shipped, or a path / hub id read with the defaults)."""
    if isinstance(name, CorpusSpec):
        return name
    sources = sources or {}
    if name in sources:
        return from_source(name, sources[name])
    if name in CORPORA:
        return CORPORA[name]
    if is_hub(name) or looks_like_path(name):
        return CorpusSpec(name=name, location=name)
    known = sorted({*CORPORA, *sources})
    raise ConfigError(
        key,
        f"unknown corpus '{name}'; known corpora: {', '.join(known)} (or a path, an hf:<id> hub id, or a name "
        "declared under sources)",
    )


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped and non-empty, in order: segtok's rule-based segmenter (abbreviations,
    initials, decimals, citations and 5'/3' ends of biomedical text are not boundaries)."""
    from segtok.segmenter import split_single

    return [sentence.strip() for sentence in split_single(text) if sentence.strip()]


def iter_sentences(spec: CorpusSpec, data_dir: str | Path = "data", key: str = "data.corpus") -> Iterator[str]:
    """The corpus's sentences (of at least ``min_words`` words), in order."""
    return (sentence for sentence, _ in iter_grouped(spec, data_dir, key))


def iter_grouped(
    spec: CorpusSpec, data_dir: str | Path = "data", key: str = "data.corpus"
) -> Iterator[tuple[str, int | None]]:
    """``(sentence, group)`` in order: the group is the row's ``group_column`` value (None without one)."""
    if spec.kind != "text":
        raise ConfigError(key, f"corpus {spec.name!r} holds images, not text")
    if not is_hub(spec.location) and spec.name in CORPORA:
        path = resolve_path(spec.location, data_dir)
        if not path.is_file():
            raise DataError(f"{path}: corpus file not found (the repository's data/ folder ships it)")
    upstream = read_upstream(spec.location, data_dir, key, kind="corpus", revision=spec.revision)
    where = spec.location if is_hub(spec.location) else str(resolve_path(spec.location, data_dir))
    if is_hub(spec.location):
        parts = [upstream[upstream_split(upstream, "train", {"train": spec.split}, where)]]
    else:
        parts = list(upstream.values())  # a file, or every file of a directory in name order
    for dataset in parts:
        if spec.column not in dataset.column_names:
            raise DataError(f"{where}: no column {spec.column!r} (found {', '.join(dataset.column_names)}); declare it")
        if spec.group_column and spec.group_column not in dataset.column_names:
            raise DataError(f"{where}: no group column {spec.group_column!r} (found {', '.join(dataset.column_names)})")
        for batch in dataset.iter(batch_size=1000):
            groups = batch[spec.group_column] if spec.group_column else [None] * len(batch[spec.column])
            for document, group in zip(batch[spec.column], groups, strict=True):
                pieces = split_sentences(document) if spec.segment else [document.strip()]
                yield from ((s, group) for s in pieces if s and len(s.split()) >= spec.min_words)


def load_corpus(
    name: str | CorpusSpec,
    data_dir: str | Path = "data",
    max_examples: int | None = None,
    key: str = "data.corpus",
    sources: Mapping[str, SourceConfig] | None = None,
) -> list[str]:
    """Sentences of corpus ``name``, in order, at most ``max_examples``. An unknown name is a
    :class:`ConfigError` on ``key`` listing the known corpora; a missing file a :class:`DataError` naming it."""
    spec = get_corpus(name, key, sources)
    if max_examples is not None and max_examples < 0:
        raise ConfigError("data.max_examples", f"got {max_examples}, must be >= 0 or null")
    return list(islice(iter_sentences(spec, data_dir, key), max_examples))
