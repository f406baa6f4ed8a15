"""What a run read, with content hashes: the corpus or task files it trained on, the task it was scored on
and the client partition. Logged as the MLflow run's dataset inputs (:meth:`fedbt.tracking.RunTracker.log_inputs`).

A data set's digest is the sha256 of its one file (the value its ``SOURCE.md`` lists), or for several files
the sha256 of their ``sha256sum``-style listing; a partition's digest is the one stored with it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fedbt.config import RunConfig
from fedbt.data.corpus import CORPORA
from fedbt.data.images import IMAGE_CORPORA, IMAGE_DATA
from fedbt.data.partition import Partition
from fedbt.data.tasks import get_task
from fedbt.tracking import DatasetRecord


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_sha256(paths: list[Path]) -> str:
    """One file's sha256, or the sha256 of the ``<sha256>  <name>`` lines of several (sorted by name)."""
    if len(paths) == 1:
        return _file_sha256(paths[0])
    listing = "".join(f"{_file_sha256(p)}  {p.name}\n" for p in sorted(paths, key=lambda p: p.name))
    return hashlib.sha256(listing.encode()).hexdigest()


def dataset_files(dataset_id: str, data_dir: str | Path) -> list[Path]:
    """The shipped files of ``corpus-<name>`` (text or image corpus) or ``task-<name>``."""
    kind, _, name = dataset_id.partition("-")
    root = Path(data_dir)
    if kind == "corpus" and name in CORPORA:
        return [root / CORPORA[name].folder / CORPORA[name].file]
    if kind == "corpus":
        spec = IMAGE_DATA[IMAGE_CORPORA[name][0]]
        return [root / spec.folder / spec.file]
    task = get_task(name)
    return [root / task.folder / file for file in dict.fromkeys(task.files.values())]


def dataset_record(dataset_id: str, data_dir: str | Path, context: str, examples: int | None = None) -> DatasetRecord:
    """A shipped data set as a dataset input (``context``: training or evaluation)."""
    files = dataset_files(dataset_id, data_dir)
    profile = {"files": [p.name for p in files]} | ({"examples": examples} if examples is not None else {})
    return DatasetRecord(dataset_id, files_sha256(files), str(files[0].parent.resolve()), context, profile)


def run_datasets(config: RunConfig, partition: Partition) -> list[DatasetRecord]:
    """Everything a run reads: its training data, its partition and the downstream task that scores it."""
    dataset_id = f"corpus-{config.data.corpus}" if config.scenario == "pretrain" else f"task-{config.data.task}"
    records = [
        dataset_record(dataset_id, config.data.data_dir, "training", sum(partition.sizes())),
        DatasetRecord(
            f"partition-{partition.path.stem}",
            partition.digest,
            str(partition.path.resolve()),
            "partition",
            {"scheme": config.federation.partition.scheme, "client_sizes": partition.sizes()},
        ),
    ]
    task = config.evaluation.task
    if task is not None and f"task-{task}" != dataset_id:
        records.append(dataset_record(f"task-{task}", config.data.data_dir, "evaluation"))
    return records
