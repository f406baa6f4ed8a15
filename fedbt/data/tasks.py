"""Downstream tasks: one registry of declarations (the shipped ones here, more in a config's ``sources``) and one
loader for all of them.

A task (:class:`TaskSpec`) says where its data is (see :mod:`fedbt.data.sources`: a path under ``data/``, any
local path, or a hub id), its kind (the objective that fine-tunes it: ``classification``,
``token_classification``, ``image_classification``), which columns hold what, which upstream split is our
``train``/``dev``/``test`` (or that one upstream split is dealt into several of ours), its labels and metrics.
:func:`load_task` reads it and returns a :class:`datasets.DatasetDict` with splits ``train``/``dev``/``test`` and

* classification: ``text`` (str) and ``label`` (class id, a ``ClassLabel`` named by the task's labels);
* token classification: ``tokens`` (list of str) and ``tags`` (list of tag ids, ``ClassLabel``; ``"O"`` = 0). An
  ``I-X`` that does not continue an ``X`` entity is read as ``B-X`` (conlleval's rule, see
  :func:`fedbt.data.ner.validate_bio`); the repairs per split are logged and kept in its ``info.description``;
* image classification: ``image`` (uint8 array H x W x C) and ``label``.

Labels: a declaration may fix them (the shipped tasks do, in the order their ids have always had); otherwise they
are inferred from train (sorted; for tagging: ``O``, then ``B-``/``I-`` of each type in sorted order), and a label
in dev or test that train lacks is an error naming the file or split and the row (CoNLL files: the line).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fedbt.data.images import CIFAR10, CIFAR10_4, ImageDataSpec, load_image_splits
from fedbt.data.ner import TaggedSentence, bio_labels, validate_bio
from fedbt.data.sources import is_hub, looks_like_path, read_upstream, resolve_path, upstream_split
from fedbt.errors import ConfigError, DataError

if TYPE_CHECKING:
    import datasets

    from fedbt.config import SourceConfig

SPLITS = ("train", "dev", "test")
SUBSET_SEED = 0
"""Seed of the shuffle that picks a split's subset (:func:`subset`): the same rows in every run and evaluation."""
KINDS = ("classification", "token_classification", "image_classification")
DEFAULT_COLUMNS = {
    "classification": {"text": "text", "label": "label"},
    "token_classification": {"tokens": "tokens", "tags": "tags"},
    "image_classification": {"image": "image", "label": "label"},
}
NER_METRICS = ("ner_f1", "ner_precision", "ner_recall")
"""Entity-level micro F1 / precision / recall (seqeval, conlleval rules; see fedbt/metrics/seqeval)."""
DEFAULT_METRICS = {
    "classification": ("accuracy", "macro_f1"),
    "token_classification": NER_METRICS,
    "image_classification": ("accuracy", "macro_f1"),
}
IMAGE_READER = "cifar10-npz"
"""The reader of the shipped CIFAR-10 subset (:mod:`fedbt.data.images`), the one task not read by ``datasets``."""
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """A task's declaration: where its data is, how to read it, how it is scored.

    ``files`` (our split -> file name under ``location``) pins the files of a shipped folder; ``splits`` maps our
    splits to upstream split names otherwise. ``deal = (upstream split, ((our split, share), ...))`` deals one
    upstream split into several of ours (:func:`deal_splits`). ``split_sizes`` are checked when present (NER: in
    sentences).
    """

    name: str
    kind: str
    location: str
    labels: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = ()
    split_sizes: Mapping[str, int] = field(default_factory=dict)
    domain: str = ""
    description: str = ""
    files: Mapping[str, str] = field(default_factory=dict)
    splits: Mapping[str, str] = field(default_factory=dict)
    deal: tuple[str, tuple[tuple[str, int], ...]] | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    label_names: tuple[str, ...] | None = None
    revision: str | None = None
    delimiter: str | None = None
    reader: str | None = None

    def column(self, role: str) -> str:
        return {**DEFAULT_COLUMNS[self.kind], **self.columns}[role]

    @property
    def scored_metrics(self) -> tuple[str, ...]:
        return self.metrics or DEFAULT_METRICS[self.kind]

    def declaration(self) -> dict:
        """The fields that determine the task's content (for fingerprints)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("description", "domain")}


_JSONL = {split: f"{split}.jsonl" for split in SPLITS}
_TXT = {split: f"{split}.txt" for split in SPLITS}
_CLASSIFICATION = ("accuracy", "macro_f1")


def _image_task(spec: ImageDataSpec, description: str) -> TaskSpec:
    """The classification task of a shipped image data set: its ``train`` and ``dev`` parts and its test images."""
    parts, classes = dict(spec.parts), len(spec.classes)
    sizes = {"train": parts["train"] * classes, "dev": parts["dev"] * classes, "test": spec.test_per_class * classes}
    return TaskSpec(
        name=spec.name,
        kind="image_classification",
        location=spec.folder,
        reader=IMAGE_READER,
        labels=spec.classes,
        metrics=_CLASSIFICATION,
        split_sizes=sizes,
        domain="vision",
        description=description,
    )


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="chemprot",
            kind="classification",
            location="chemprot",
            files=_JSONL,
            labels=(
                "ACTIVATOR",
                "AGONIST",
                "AGONIST-ACTIVATOR",
                "AGONIST-INHIBITOR",
                "ANTAGONIST",
                "DOWNREGULATOR",
                "INDIRECT-DOWNREGULATOR",
                "INDIRECT-UPREGULATOR",
                "INHIBITOR",
                "PRODUCT-OF",
                "SUBSTRATE",
                "SUBSTRATE_PRODUCT-OF",
                "UPREGULATOR",
            ),
            metrics=_CLASSIFICATION,
            split_sizes={"train": 4169, "dev": 2427, "test": 3469},
            domain="biomed",
            description="ChemProt chemical-protein relation classification, 13-way (DSP/SciBERT version)",
        ),
        TaskSpec(
            name="citation_intent",
            kind="classification",
            location="citation_intent",
            files=_JSONL,
            labels=("Background", "CompareOrContrast", "Extends", "Future", "Motivation", "Uses"),
            metrics=_CLASSIFICATION,
            split_sizes={"train": 1688, "dev": 114, "test": 139},
            domain="cs",
            description="ACL-ARC citation intent classification, 6-way (DSP/SciBERT version)",
        ),
        TaskSpec(
            name="sciie",
            kind="classification",
            location="sciie",
            files=_JSONL,
            labels=("COMPARE", "CONJUNCTION", "EVALUATE-FOR", "FEATURE-OF", "HYPONYM-OF", "PART-OF", "USED-FOR"),
            metrics=_CLASSIFICATION,
            split_sizes={"train": 3219, "dev": 455, "test": 974},
            domain="cs",
            description="SciERC relation classification, 7-way (DSP 'SCIERC')",
        ),
        TaskSpec(
            name="rct",
            kind="classification",
            location="rct_sample",
            files={"all": "train.jsonl"},
            deal=("all", (("train", 3), ("dev", 1), ("test", 1))),
            labels=("BACKGROUND", "CONCLUSIONS", "METHODS", "OBJECTIVE", "RESULTS"),
            metrics=_CLASSIFICATION,
            split_sizes={"train": 300, "dev": 100, "test": 100},
            domain="biomed",
            description=(
                "PubMed RCT sentence roles, 5-way: DSP's 500-sentence RCT-500 sample, dealt 300/100/100 "
                "(label-stratified, see deal_splits); the paper's RCT-20k is `hf:armanc/pubmed-rct20k`"
            ),
        ),
        TaskSpec(
            name="sst2",
            kind="classification",
            location="sst2",
            files={"train": "train.tsv", "glue_dev": "dev.tsv"},
            columns={"text": "sentence"},
            deal=("glue_dev", (("dev", 1), ("test", 1))),
            labels=("0", "1"),
            metrics=_CLASSIFICATION,
            split_sizes={"train": 20000, "dev": 436, "test": 436},
            domain="general",
            description=(
                "GLUE SST-2 sentiment (0 negative, 1 positive): the first 20,000 of 67,349 train rows; GLUE's 872 dev "
                "rows dealt 436/436 into dev and test (label-stratified); GLUE's test has no labels"
            ),
        ),
        TaskSpec(
            name="ag_news",
            kind="classification",
            location="ag_news",
            files={"dsp_dev": "dev.jsonl", "test": "test.jsonl"},
            deal=("dsp_dev", (("train", 4), ("dev", 1))),
            labels=("1", "2", "3", "4"),
            metrics=("macro_f1", "accuracy"),
            split_sizes={"train": 4000, "dev": 1000, "test": 7600},
            domain="news",
            description=(
                "AG News topics (1 World, 2 Sports, 3 Business, 4 Sci/Tech), DSP's files: its 5,000-row dev dealt "
                "4,000/1,000 into train and dev (label-stratified; DSP's 115,000-row train is not shipped), test whole"
            ),
        ),
        TaskSpec(
            name="bc5cdr",
            kind="token_classification",
            location="ner_bc5cdr",
            files=_TXT,
            labels=bio_labels(["Entity"]),
            metrics=NER_METRICS,
            split_sizes={"train": 2580, "dev": 1263, "test": 1316},
            domain="biomed",
            description=(
                "BC5CDR chemical and disease mentions as one type 'Entity' (SciBERT/FedBFPT version); shipped: "
                "the first 338 / 158 / 159 of 500 abstracts per split"
            ),
        ),
        TaskSpec(
            name="ncbi_disease",
            kind="token_classification",
            location="ner_ncbi_disease",
            files=_TXT,
            labels=bio_labels(["Disease"]),
            metrics=NER_METRICS,
            split_sizes={"train": 3000, "dev": 923, "test": 940},
            domain="biomed",
            description=(
                "NCBI-disease disease mentions (SciBERT/FedBFPT version); shipped: the first 3,000 of 5,424 "
                "train sentences, dev and test whole"
            ),
        ),
        TaskSpec(
            name="jnlpba",
            kind="token_classification",
            location="ner_jnlpba",
            files={"train": "train_official_standoff.jsonl", "dev": "dev.txt", "test": "test.txt"},
            labels=bio_labels(["DNA", "RNA", "cell_line", "cell_type", "protein"]),
            metrics=NER_METRICS,
            split_sizes={"train": 6649, "dev": 883, "test": 1962},
            domain="biology",
            description=(
                "JNLPBA bio-entities, 5 types; train converted from standoff at load time (the first 715 of "
                "SciBERT's 1,800 train abstracts), dev / test the first 106 of 200 / 210 of 404 abstracts"
            ),
        ),
        TaskSpec(
            name="scierc_ner",
            kind="token_classification",
            location="ner_scierc",
            files=_TXT,
            labels=bio_labels(["Task", "Method", "Metric", "Material", "OtherScientificTerm", "Generic"]),
            metrics=NER_METRICS,
            split_sizes={"train": 1861, "dev": 275, "test": 551},
            domain="cs",
            description="SciERC scientific entities, 6 types (FedBFPT's BIO files, whole)",
            delimiter=" ",
        ),
        _image_task(
            CIFAR10,
            "CIFAR-10 subset, 10 classes, 32x32 (train/dev dealt from the shipped train images, see fedbt.data.images)",
        ),
        _image_task(
            CIFAR10_4,
            "CIFAR-10 subset, its first 4 classes (airplane, automobile, bird, cat), 32x32, dealt as cifar10",
        ),
    )
}


def from_source(name: str, source: SourceConfig) -> TaskSpec:
    """The task declared as ``sources.<name>`` in a run config."""
    if source.kind not in KINDS:
        raise ConfigError(f"sources.{name}.kind", f"a task is one of {', '.join(KINDS)}, got {source.kind!r}")
    deal = None
    if source.deal is not None:
        deal = (source.deal.source, tuple(source.deal.into.items()))
    return TaskSpec(
        name=name,
        kind=source.kind,
        location=source.location,
        labels=tuple(source.labels) if source.labels else None,
        metrics=tuple(source.metrics or ()),
        split_sizes=dict(source.sizes),
        description=source.description,
        splits=dict(source.splits),
        deal=deal,
        columns=dict(source.columns),
        label_names=tuple(source.label_names) if source.label_names else None,
        revision=source.revision,
        delimiter=source.delimiter,
    )


def get_task(name: str, key: str = "data.task", sources: Mapping[str, SourceConfig] | None = None) -> TaskSpec:
    """The declaration of task ``name``: declared in ``sources``, shipped, or a path / hub id read with the
    default declaration (classification, columns ``text``/``label``). Anything else is a :class:`ConfigError` on
    ``key`` listing the known tasks."""
    if isinstance(name, TaskSpec):
        return name
    sources = sources or {}
    if name in sources:
        return from_source(name, sources[name])
    if name in TASKS:
        return TASKS[name]
    if is_hub(name) or looks_like_path(name):
        return TaskSpec(name=name, kind="classification", location=name)
    known = sorted({*TASKS, *sources})
    raise ConfigError(
        key,
        f"unknown task '{name}'; known tasks: {', '.join(known)} (or a path, an hf:<id> hub id, or a name declared "
        "under sources)",
    )


def load_task(
    name: str | TaskSpec, data_dir: str | Path = "data", key: str = "data.task", sources=None
) -> datasets.DatasetDict:
    """Read and check a task (see the module docstring); errors name ``key``, the file or split and the row."""
    import datasets

    spec = get_task(name, key, sources)
    if spec.reader == IMAGE_READER:
        return datasets.DatasetDict(_image_splits(spec, data_dir, key))
    upstream, origins = _upstream(spec, data_dir, key)
    where = spec.location if is_hub(spec.location) else str(resolve_path(spec.location, data_dir))
    sources_of = _sources_of_splits(spec, upstream, where)
    labels = spec.labels or _infer_labels(spec, upstream[sources_of["train"]])
    canonical = {
        name: _canonical(spec, upstream[name], labels, origins[name]) for name in dict.fromkeys(sources_of.values())
    }
    splits = {}
    if spec.deal is not None:
        dealt, pattern = spec.deal
        for split, rows in deal_splits(*_deal_keys(spec, canonical[sources_of[pattern[0][0]]]), pattern).items():
            splits[split] = canonical[sources_of[split]].select(rows)
    for split in SPLITS:
        splits.setdefault(split, canonical[sources_of[split]])
    for split in SPLITS:
        expected = spec.split_sizes.get(split)
        if expected is not None and len(splits[split]) != expected:
            unit = "sentences" if spec.kind == "token_classification" else "rows"
            raise DataError(
                f"{origins[sources_of[split]]}: split {split}: expected {expected} {unit}, found {len(splits[split])}"
            )
    return datasets.DatasetDict({split: splits[split] for split in SPLITS})


def _upstream(spec: TaskSpec, data_dir, key: str) -> tuple[dict, dict[str, str]]:
    """The upstream splits and where each comes from (a file, or a hub split), for error messages."""
    from fedbt.data.sources import read_file

    if not spec.files:
        upstream = read_upstream(
            spec.location, data_dir, key, kind=spec.kind, revision=spec.revision, delimiter=spec.delimiter
        )
        if is_hub(spec.location):
            return upstream, {name: f"{spec.location} split {name}" for name in upstream}
        path = resolve_path(spec.location, data_dir)
        files = {p.stem: str(p) for p in path.iterdir()} if path.is_dir() else {"train": str(path)}
        return upstream, {name: files[name] for name in upstream}
    folder = resolve_path(spec.location, data_dir)
    found, origins = {}, {}
    for split, file_name in spec.files.items():
        path = folder / file_name
        if not path.is_file():
            raise DataError(
                f"{path}: file not found; task '{spec.name}' needs {spec.location}/{file_name} under the data "
                "directory (the repository's data/ folder ships it)"
            )
        found[split], origins[split] = read_file(path, spec.kind, spec.delimiter), str(path)
    return found, origins


def _sources_of_splits(spec: TaskSpec, upstream: dict, where: str) -> dict[str, str]:
    """Our split -> the upstream split it comes from (dealt ones: the dealt upstream split)."""
    sources = {}
    if spec.deal is not None:
        dealt, pattern = spec.deal
        name = upstream_split(upstream, dealt, {dealt: dealt}, where)
        sources.update({split: name for split, _ in pattern})
    for split in SPLITS:
        if split not in sources:
            sources[split] = upstream_split(upstream, split, dict(spec.splits), where)
    return sources


def _deal_keys(spec: TaskSpec, dataset) -> tuple[list[str], list[int]]:
    """(text, label id) per row of a canonical split, what :func:`deal_splits` orders rows by."""
    table = dataset[:]
    if spec.kind == "token_classification":
        texts = [" ".join(tokens) for tokens in table["tokens"]]
        return texts, [min(tags, default=0) for tags in table["tags"]]
    return [str(t) for t in table["text"]], list(table["label"])


def _sort_key(label: str):
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


def _namer(spec: TaskSpec, dataset, column: str):
    """A function from raw label values (or lists of them) of ``column`` to label names: ``ClassLabel`` names,
    declared ``label_names``, else ``str(value)``."""
    feature = dataset.features[column]
    inner = getattr(feature, "feature", None)  # a sequence of tags
    names = getattr(inner if inner is not None else feature, "names", None) or spec.label_names

    def name(value):
        return names[value] if names and isinstance(value, int) else str(value)

    return lambda value: [name(v) for v in value] if isinstance(value, list) else name(value)


def _label_name(spec: TaskSpec, dataset, column: str, value):
    return _namer(spec, dataset, column)(value)


def _infer_labels(spec: TaskSpec, train) -> tuple[str, ...]:
    """Labels seen in train: sorted (numbers numerically); tag sets as ``O`` + B-/I- of each type, sorted."""
    column = spec.column("tags" if spec.kind == "token_classification" else "label")
    namer = _namer(spec, train, column)
    if spec.kind == "token_classification":
        values = {tag for tags in train[:][column] for tag in namer(tags)}
    else:
        values = {namer(v) for v in train[:][column]}
    if spec.kind == "token_classification":
        return bio_labels(sorted({tag[2:] for tag in values if tag != "O"}))
    return tuple(sorted(values, key=_sort_key))


def _canonical(spec: TaskSpec, dataset, labels: tuple[str, ...], where: str):
    """One split in the canonical columns and features, every label checked against ``labels``."""
    import datasets

    ids = {label: i for i, label in enumerate(labels)}
    origin = "the task's labels" if spec.labels else "the labels of train"

    def label_id(value, row: int, line: int | None = None) -> int:
        if value not in ids:
            place = f"line {line}" if line is not None else f"row {row + 1}"
            raise DataError(
                f"{where}: {place}: label {value!r} is not in {origin} of task '{spec.name}': {', '.join(labels)}"
            )
        return ids[value]

    if spec.kind == "image_classification":
        return dataset
    if spec.kind == "classification":
        text_column, label_column = spec.column("text"), spec.column("label")
        _require_columns(dataset, (text_column, label_column), where)
        table = dataset[:]
        texts = table[text_column]
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"{where}: row {row + 1}: expected a string '{text_column}', got {text!r}")
        namer = _namer(spec, dataset, label_column)
        label_ids = [label_id(namer(v), row) for row, v in enumerate(table[label_column])]
        features = datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(labels))}
        )
        return datasets.Dataset.from_dict({"text": texts, "label": label_ids}, features=features)
    tokens_column, tags_column = spec.column("tokens"), spec.column("tags")
    _require_columns(dataset, (tokens_column, tags_column), where)
    table = dataset[:]
    lines = table.get("lines")
    namer = _namer(spec, dataset, tags_column)
    sentences = []
    for row, (tokens, tags) in enumerate(zip(table[tokens_column], table[tags_column], strict=True)):
        names = namer(tags)
        sentence_lines = lines[row] if lines is not None else [row + 1] * len(tokens)
        for tag, line in zip(names, sentence_lines, strict=True):
            if tag not in ids and not (tag.startswith("I-") and f"B-{tag[2:]}" in ids):
                label_id(tag, row, line if lines is not None else None)
        sentences.append(TaggedSentence(list(tokens), list(names), list(sentence_lines)))
    repairs = validate_bio(sentences, where)
    summary = f"{where}: {len(sentences)} sentences, {repairs} BIO repairs (I-X not continuing X -> B-X)"
    logger.info("task '%s' %s", spec.name, summary)
    features = datasets.Features(
        {
            "tokens": datasets.List(datasets.Value("string")),
            "tags": datasets.List(datasets.ClassLabel(names=list(labels))),
        }
    )
    columns = {
        "tokens": [s.tokens for s in sentences],
        "tags": [[ids[tag] for tag in s.tags] for s in sentences],
    }
    info = datasets.DatasetInfo(description=summary, features=features)
    return datasets.Dataset.from_dict(columns, features=features, info=info)


def _require_columns(dataset, columns: tuple[str, ...], where: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {', '.join(missing)}; found {', '.join(dataset.column_names)} "
            "(declare the column names under the source's columns)"
        )


def _image_splits(spec: TaskSpec, data_dir: str | Path, key: str) -> dict:
    """The shipped image task: ``image``/``label`` per row (:mod:`fedbt.data.images`)."""
    import datasets

    parts = load_image_splits(spec.name, data_dir, key)
    height, width, channels = parts["test"].images.shape[1:]
    features = datasets.Features(
        {
            "image": datasets.Array3D(shape=(height, width, channels), dtype="uint8"),
            "label": datasets.ClassLabel(names=list(spec.labels)),
        }
    )
    return {
        split: datasets.Dataset.from_dict(
            {"image": parts[split].images, "label": parts[split].labels}, features=features
        )
        for split in SPLITS
    }


def subset_rows(n: int, limit: int | None) -> list[int]:
    """The rows :func:`subset` keeps of a split of ``n`` rows: all, or the first ``limit`` of a permutation seeded
    by :data:`SUBSET_SEED` (the permutation ``datasets.Dataset.shuffle(seed=...)`` uses)."""
    import numpy as np

    if limit is None or limit >= n:
        return list(range(n))
    return np.random.default_rng(SUBSET_SEED).permutation(n)[:limit].tolist()


def subset(split: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    """The one rule that draws a subset of a task split everywhere (federated training pools, per-round dev/test
    scores, downstream evaluation): :func:`subset_rows`."""
    if limit is None or limit >= len(split):
        return split
    return split.select(subset_rows(len(split), limit))


def deal_splits(texts: list[str], label_ids: list[int], pattern: tuple[tuple[str, int], ...]) -> dict[str, list[int]]:
    """Deterministic label-stratified split of rows into named splits; returns row indices per split.

    Rows are ordered by (label id, sha256 of the text, row index) and dealt in a repeating cycle given
    by ``pattern`` (``(("train", 3), ("dev", 1), ("test", 1))`` deals train, train, train, dev, test,
    ...), so every class is split in the pattern's ratio to within one row per split. Indices are
    returned in file order. The result depends only on the rows' content, not on any RNG.
    """
    cycle = [split for split, count in pattern for _ in range(count)]
    order = sorted(
        range(len(texts)),
        key=lambda i: (label_ids[i], hashlib.sha256(texts[i].encode()).hexdigest(), i),
    )
    dealt: dict[str, list[int]] = {split: [] for split, _ in pattern}
    for position, index in enumerate(order):
        dealt[cycle[position % len(cycle)]].append(index)
    return {split: sorted(indices) for split, indices in dealt.items()}
