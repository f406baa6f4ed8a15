"""Registry and offline loader of the downstream tasks shipped under ``data/``.

Classification tasks (``kind="classification"``) are folders of JSON-lines files (``{"text": ..., "label": ...}``
per line); NER tasks (``kind="ner"``) are CoNLL-style BIO files (or, for JNLPBA train, standoff documents
converted to BIO at load time, see :mod:`fedbt.data.ner`). :func:`load_task` parses them line by line, checks
every row against the task's :class:`TaskSpec` (row or sentence counts, label or tag set) and returns a
:class:`datasets.DatasetDict` with splits ``train``/``dev``/``test`` and columns

* classification: ``text`` (str) and ``label`` (int class id, a ``ClassLabel`` named by ``TaskSpec.labels``);
* image classification (``kind="image_classification"``, images from :mod:`fedbt.data.images`): ``image``
  (uint8 array H x W x C) and ``label``;
* NER: ``tokens`` (list of str) and ``tags`` (list of int tag ids, ``ClassLabel`` named by ``TaskSpec.labels``,
  ``"O"`` = 0). A tag ``I-X`` that does not continue an ``X`` entity is read as ``B-X`` (the conlleval rule,
  see :func:`fedbt.data.ner.validate_bio`); the number of such repairs per file is logged and kept in the
  split's ``info.description``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedbt.data.images import CIFAR10, load_image_splits
from fedbt.data.ner import TaggedSentence, bio_labels, read_conll, read_standoff, validate_bio
from fedbt.errors import ConfigError, DataError

if TYPE_CHECKING:
    import datasets

SPLITS = ("train", "dev", "test")
SUBSET_SEED = 0
"""Seed of the shuffle that picks a split's subset (:func:`subset`): the same rows in every run and evaluation."""
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """What a task's files must contain, and how it is scored.

    ``split_pattern`` is set only for tasks shipped as one file (``rct``): the file's rows, whose count
    must be the sum of ``split_sizes``, are dealt into splits by :func:`deal_splits`.

    NER tasks: ``labels`` are the BIO tags (index = tag id, ``"O"`` first), ``split_sizes`` count sentences,
    a ``.txt`` file has ``columns`` fields per line separated by ``delimiter`` (token first, tag last) and a
    ``.jsonl`` file holds standoff documents (:func:`fedbt.data.ner.read_standoff`).
    """

    name: str
    kind: str
    folder: str
    files: dict[str, str]
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    split_sizes: dict[str, int]
    domain: str
    description: str
    split_pattern: tuple[tuple[str, int], ...] | None = None
    columns: int = 4
    delimiter: str = "\t"


_JSONL_SPLITS = {split: f"{split}.jsonl" for split in SPLITS}
_TXT_SPLITS = {split: f"{split}.txt" for split in SPLITS}
NER_METRICS = ("ner_f1", "ner_precision", "ner_recall")
"""Entity-level micro F1 / precision / recall (seqeval, conlleval rules; see fedbt/metrics/seqeval)."""

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="chemprot",
            kind="classification",
            folder="chemprot",
            files=_JSONL_SPLITS,
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
            metrics=("accuracy", "macro_f1"),
            split_sizes={"train": 4169, "dev": 2427, "test": 3469},
            domain="biomed",
            description="ChemProt chemical-protein relation classification, 13-way (DSP/SciBERT version)",
        ),
        TaskSpec(
            name="citation_intent",
            kind="classification",
            folder="citation_intent",
            files=_JSONL_SPLITS,
            labels=("Background", "CompareOrContrast", "Extends", "Future", "Motivation", "Uses"),
            metrics=("accuracy", "macro_f1"),
            split_sizes={"train": 1688, "dev": 114, "test": 139},
            domain="cs",
            description="ACL-ARC citation intent classification, 6-way (DSP/SciBERT version)",
        ),
        TaskSpec(
            name="sciie",
            kind="classification",
            folder="sciie",
            files=_JSONL_SPLITS,
            labels=(
                "COMPARE",
                "CONJUNCTION",
                "EVALUATE-FOR",
                "FEATURE-OF",
                "HYPONYM-OF",
                "PART-OF",
                "USED-FOR",
            ),
            metrics=("accuracy", "macro_f1"),
            split_sizes={"train": 3219, "dev": 455, "test": 974},
            domain="cs",
            description="SciERC relation classification, 7-way (DSP 'SCIERC')",
        ),
        TaskSpec(
            name="rct",
            kind="classification",
            folder="rct_sample",
            files={"train": "train.jsonl"},
            labels=("BACKGROUND", "CONCLUSIONS", "METHODS", "OBJECTIVE", "RESULTS"),
            metrics=("accuracy", "macro_f1"),
            split_sizes={"train": 300, "dev": 100, "test": 100},
            domain="biomed",
            description=(
                "PubMed RCT sentence roles, 5-way: DSP's 500-sentence RCT-500 sample, split 300/100/100 "
                "in code (label-stratified, see deal_splits); the paper's RCT-20k dev/test are not shipped"
            ),
            split_pattern=(("train", 3), ("dev", 1), ("test", 1)),
        ),
        TaskSpec(
            name="bc5cdr",
            kind="ner",
            folder="ner_bc5cdr",
            files=_TXT_SPLITS,
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
            kind="ner",
            folder="ner_ncbi_disease",
            files=_TXT_SPLITS,
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
            kind="ner",
            folder="ner_jnlpba",
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
            kind="ner",
            folder="ner_scierc",
            files=_TXT_SPLITS,
            labels=bio_labels(["Task", "Method", "Metric", "Material", "OtherScientificTerm", "Generic"]),
            metrics=NER_METRICS,
            split_sizes={"train": 1861, "dev": 275, "test": 551},
            domain="cs",
            description="SciERC scientific entities, 6 types (FedBFPT's BIO files, whole)",
            columns=2,
            delimiter=" ",
        ),
        TaskSpec(
            name="cifar10",
            kind="image_classification",
            folder=CIFAR10.folder,
            files={"npz": CIFAR10.file},
            labels=CIFAR10.classes,
            metrics=("accuracy", "macro_f1"),
            split_sizes={"train": 3500, "dev": 500, "test": 1000},
            domain="vision",
            description="CIFAR-10 subset, 10 classes, 32x32 (train/dev dealt from the shipped train images, "
            "see fedbt.data.images)",
        ),
    )
}


def get_task(name: str, key: str = "data.task") -> TaskSpec:
    """The spec of task ``name``; an unknown name is a :class:`ConfigError` on ``key`` listing known tasks."""
    if name not in TASKS:
        raise ConfigError(key, f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def load_task(name: str, data_dir: str | Path = "data", key: str = "data.task") -> datasets.DatasetDict:
    """Load and check task ``name`` from ``data_dir/<folder>`` as a DatasetDict (train/dev/test).

    Raises :class:`DataError` naming the file for a missing file, a malformed line, a label or tag outside
    the task's set (with the line), a malformed BIO tag (with the line), or a row or sentence count that
    differs from the spec.
    """
    import datasets

    spec = get_task(name, key)
    folder = Path(data_dir) / spec.folder
    if spec.kind == "ner":
        return _load_ner(spec, folder)
    if spec.kind == "image_classification":
        return _load_images(spec, data_dir, key)
    if spec.split_pattern:
        (file_name,) = spec.files.values()
        texts, label_ids = _read_rows(spec, folder / file_name, sum(spec.split_sizes.values()))
        splits = {
            split: ([texts[i] for i in idx], [label_ids[i] for i in idx])
            for split, idx in deal_splits(texts, label_ids, spec.split_pattern).items()
        }
    else:
        splits = {split: _read_rows(spec, folder / spec.files[split], spec.split_sizes[split]) for split in SPLITS}
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(spec.labels))}
    )
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict({"text": texts, "label": ids}, features=features)
            for split, (texts, ids) in splits.items()
        }
    )


def _load_images(spec: TaskSpec, data_dir: str | Path, key: str) -> datasets.DatasetDict:
    """The image task ``spec``: ``image``/``label`` per row, split sizes checked against the spec."""
    import datasets

    parts = load_image_splits(spec.name, data_dir, key)
    height, width, channels = parts["test"].images.shape[1:]
    features = datasets.Features(
        {
            "image": datasets.Array3D(shape=(height, width, channels), dtype="uint8"),
            "label": datasets.ClassLabel(names=list(spec.labels)),
        }
    )
    splits = {}
    for split in SPLITS:
        part = parts[split]
        if len(part) != spec.split_sizes[split]:
            raise DataError(
                f"task '{spec.name}' split {split}: expected {spec.split_sizes[split]} images, found {len(part)}"
            )
        splits[split] = datasets.Dataset.from_dict({"image": part.images, "label": part.labels}, features=features)
    return datasets.DatasetDict(splits)


def subset(split: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    """The one rule that draws a subset of a task split everywhere (federated training pools, per-round dev/test
    scores, downstream evaluation): the first ``limit`` rows after a shuffle seeded by :data:`SUBSET_SEED`, or
    the whole split when ``limit`` is None or not smaller than it."""
    if limit is None or limit >= len(split):
        return split
    return split.shuffle(seed=SUBSET_SEED).select(range(limit))


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


def _check_exists(spec: TaskSpec, path: Path) -> None:
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; task '{spec.name}' needs {spec.folder}/{path.name} under the data "
            "directory (the repository's data/ folder ships it)"
        )


def _read_rows(spec: TaskSpec, path: Path, expected_rows: int) -> tuple[list[str], list[int]]:
    """Parse a JSON-lines file of ``spec`` into (texts, label ids), checking each line; skips blank lines."""
    _check_exists(spec, path)
    label_ids = {label: i for i, label in enumerate(spec.labels)}
    texts: list[str] = []
    ids: list[int] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: line {line_number}: malformed JSON ({error.msg})") from error
            if not (isinstance(row, dict) and isinstance(row.get("text"), str) and "label" in row):
                raise DataError(f"{path}: line {line_number}: expected an object with a string 'text' and a 'label'")
            label = row["label"]
            if label not in label_ids:
                raise DataError(
                    f"{path}: line {line_number}: label {label!r} is not in the label set of task "
                    f"'{spec.name}': {', '.join(spec.labels)}"
                )
            texts.append(row["text"])
            ids.append(label_ids[label])
    if len(texts) != expected_rows:
        raise DataError(f"{path}: expected {expected_rows} rows, found {len(texts)}")
    return texts, ids


def _load_ner(spec: TaskSpec, folder: Path) -> datasets.DatasetDict:
    """The NER task ``spec`` from ``folder``: ``tokens``/``tags`` per sentence, every split checked."""
    import datasets

    features = datasets.Features(
        {
            "tokens": datasets.List(datasets.Value("string")),
            "tags": datasets.List(datasets.ClassLabel(names=list(spec.labels))),
        }
    )
    tag_ids = {tag: i for i, tag in enumerate(spec.labels)}
    splits = {}
    for split in SPLITS:
        path = folder / spec.files[split]
        sentences, repairs = _read_sentences(spec, path, spec.split_sizes[split])
        columns = {
            "tokens": [sentence.tokens for sentence in sentences],
            "tags": [[tag_ids[tag] for tag in sentence.tags] for sentence in sentences],
        }
        summary = f"{path.name}: {len(sentences)} sentences, {repairs} BIO repairs (I-X not continuing X -> B-X)"
        logger.info("task '%s' %s", spec.name, summary)
        info = datasets.DatasetInfo(description=summary, features=features)
        splits[split] = datasets.Dataset.from_dict(columns, features=features, info=info)
    return datasets.DatasetDict(splits)


def _read_sentences(spec: TaskSpec, path: Path, expected: int) -> tuple[list[TaggedSentence], int]:
    """The checked sentences of one NER file (BIO repaired) and the number of repairs."""
    _check_exists(spec, path)
    sentences = read_standoff(path) if path.suffix == ".jsonl" else read_conll(path, spec.delimiter, spec.columns)
    known = set(spec.labels)
    for sentence in sentences:
        for tag, line in zip(sentence.tags, sentence.lines, strict=True):
            if tag not in known:
                raise DataError(
                    f"{path}: line {line}: tag {tag!r} is not in the tag set of task '{spec.name}': "
                    f"{', '.join(spec.labels)}"
                )
    repairs = validate_bio(sentences, path)
    if len(sentences) != expected:
        raise DataError(f"{path}: expected {expected} sentences, found {len(sentences)}")
    return sentences, repairs
