"""Registry and offline loader of the downstream classification tasks shipped under ``data/``.

Each task is a folder of JSON-lines files (``{"text": ..., "label": ...}`` per line). :func:`load_task`
parses them line by line, checks every row against the task's :class:`TaskSpec` (row counts, label set)
and returns a :class:`datasets.DatasetDict` with splits ``train``/``dev``/``test`` and columns ``text``
(str) and ``label`` (int class id, a ``ClassLabel`` whose names are ``TaskSpec.labels``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedbt.errors import ConfigError, DataError

if TYPE_CHECKING:
    import datasets

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class TaskSpec:
    """What a task's files must contain, and how it is scored.

    ``split_pattern`` is set only for tasks shipped as one file (``rct``): the file's rows, whose count
    must be the sum of ``split_sizes``, are dealt into splits by :func:`deal_splits`.
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


_JSONL_SPLITS = {split: f"{split}.jsonl" for split in SPLITS}

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
    )
}


def get_task(name: str, key: str = "data.task") -> TaskSpec:
    """The spec of task ``name``; an unknown name is a :class:`ConfigError` on ``key`` listing known tasks."""
    if name not in TASKS:
        raise ConfigError(key, f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def load_task(name: str, data_dir: str | Path = "data", key: str = "data.task") -> datasets.DatasetDict:
    """Load and check task ``name`` from ``data_dir/<folder>`` as a DatasetDict (train/dev/test).

    Raises :class:`DataError` naming the file for a missing file, a malformed JSON line, a label outside
    the task's label set, or a row count that differs from the spec.
    """
    import datasets

    spec = get_task(name, key)
    folder = Path(data_dir) / spec.folder
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


def _read_rows(spec: TaskSpec, path: Path, expected_rows: int) -> tuple[list[str], list[int]]:
    """Parse a JSON-lines file of ``spec`` into (texts, label ids), checking each line; skips blank lines."""
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; task '{spec.name}' needs {spec.folder}/{path.name} under the data "
            "directory (the repository's data/ folder ships it)"
        )
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
