"""What a run read, with content hashes: the corpus or task it trained on, the task it was scored on and the
client partition. Logged as the MLflow run's dataset inputs (:meth:`fedbt.tracking.RunTracker.log_inputs`).

A local data set's digest is the sha256 of its one file (for the shipped ones, the value its ``SOURCE.md``
lists), or for several files the sha256 of their ``sha256sum``-style listing; a hub data set's digest is its
source fingerprint (id, revision and declaration: :func:`fedbt.data.sources.fingerprint`); a partition's
digest is the one stored with it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fedbt.config import RunConfig
from fedbt.data.corpus import CorpusSpec, get_corpus
from fedbt.data.images import IMAGE_DATA
from fedbt.data.run_data import RunData
from fedbt.data.sources import BUILDERS, fingerprint, is_hub, resolve_path
from fedbt.data.tasks import TaskSpec, get_task
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


def data_files(spec: CorpusSpec | TaskSpec, data_dir: str | Path) -> list[Path]:
    """The local files of a corpus or task: its pinned files, its one file, or the data files of its folder."""
    image_part = getattr(spec, "image_part", None)
    if image_part is not None:
        image = IMAGE_DATA[image_part[0]]
        return [Path(data_dir) / image.folder / image.file]
    path = resolve_path(spec.location, data_dir)
    pinned = getattr(spec, "files", None)
    if pinned:
        return [path / name for name in dict.fromkeys(pinned.values())]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in BUILDERS)
    return [path]


def dataset_record(
    dataset_id: str, spec: CorpusSpec | TaskSpec, data_dir: str | Path, context: str, examples: int | None = None
) -> DatasetRecord:
    """A corpus or task as a dataset input (``context``: training or evaluation)."""
    profile = {"examples": examples} if examples is not None else {}
    if is_hub(spec.location):
        digest = fingerprint(spec.declaration(), spec.location, data_dir)
        return DatasetRecord(dataset_id, digest, spec.location, context, profile | {"revision": spec.revision})
    files = data_files(spec, data_dir)
    profile = {"files": [p.name for p in files]} | profile
    return DatasetRecord(dataset_id, files_sha256(files), str(files[0].parent.resolve()), context, profile)


def run_datasets(config: RunConfig, data: RunData) -> list[DatasetRecord]:
    """Everything a run reads: its training data, its partition and the downstream task that scores it."""
    pretrain = config.scenario == "pretrain"
    spec = get_corpus(config.data.corpus, "data.corpus", config.sources) if pretrain else data.task
    partition, root = data.partition, config.data.data_dir
    records = [
        dataset_record(data.dataset_id, spec, root, "training", data.pool_size),
        DatasetRecord(
            f"partition-{partition.path.stem}",
            partition.digest,
            str(partition.path.resolve()),
            "partition",
            {"scheme": config.federation.partition.scheme, "client_sizes": partition.sizes()},
        ),
    ]
    task = config.evaluation.task
    if task is not None and config.scenario == "pretrain":
        records.append(
            dataset_record(f"task-{task}", get_task(task, "evaluation.task", config.sources), root, "evaluation")
        )
    return records
