"""Where data comes from, read one way: every corpus and task, shipped or not, is a declaration read through
Hugging Face ``datasets``.

A data set is named in ``data.corpus``, ``data.task`` or ``evaluation.task`` as

* a shipped name (``cs``, ``chemprot``, ...: the registries in :mod:`fedbt.data.corpus` and
  :mod:`fedbt.data.tasks`, whose entries are declarations like any other, located under ``data.data_dir``);
* a name declared in the run config's ``sources`` (:class:`fedbt.config.SourceConfig`: location, kind, columns,
  splits, labels, ...);
* a local path: a file (``.txt`` one document per line, ``.jsonl``/``.json``, ``.csv``/``.tsv``, ``.parquet``;
  CoNLL ``.txt`` for token classification) or a directory of them (a task: one file per split, named by the split:
  ``train.jsonl``, ``dev.jsonl`` or ``validation.jsonl``, ``test.jsonl``);
* a hub id ``hf:<dataset id>[:<config>]`` (``datasets.load_dataset``; with ``HF_HUB_OFFLINE=1`` only what the local
  cache holds).

Local files and hub ids take the same path: :func:`read_upstream` returns the upstream splits as ``datasets``
objects with their own columns, and the corpus and task loaders map columns, splits and labels from the
declaration. CoNLL files and JNLPBA's standoff documents, which ``datasets`` has no builder for, are read by
:mod:`fedbt.data.ner` into the same ``datasets`` objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from fedbt.errors import ConfigError, DataError

if TYPE_CHECKING:
    import datasets

HF_PREFIX = "hf:"
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
"""File suffix -> the ``datasets`` builder that reads it."""
SPLIT_ALIASES = {"train": ("train",), "dev": ("dev", "validation", "valid", "val"), "test": ("test",)}
"""Our split -> the upstream split names it is found under when the declaration does not say."""


def is_hub(location: str) -> bool:
    return location.startswith(HF_PREFIX)


def looks_like_path(name: str) -> bool:
    """True when a data set name is a path rather than a registered name (a separator or a known suffix)."""
    return "/" in name or os.sep in name or Path(name).suffix in BUILDERS


def resolve_path(location: str, data_dir: str | Path) -> Path:
    """A local location: absolute, ``./``-relative (to the working directory) or relative to ``data_dir``."""
    path = Path(location).expanduser()
    if path.is_absolute() or location.startswith(("./", "../")):
        return path
    under = Path(data_dir) / path
    return under if under.exists() or not path.exists() else path


def hub_id(location: str) -> tuple[str, str | None]:
    """``hf:<id>[:<config>]`` -> ``(id, config)``."""
    dataset_id, _, config = location.removeprefix(HF_PREFIX).partition(":")
    return dataset_id, config or None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get(
        "HF_DATASETS_OFFLINE", "0"
    ) not in ("0", "", "false")


# --------------------------------------------------------------------------------------- reading


def read_upstream(
    location: str,
    data_dir: str | Path,
    key: str,
    *,
    kind: str,
    revision: str | None = None,
    delimiter: str | None = None,
) -> dict[str, datasets.Dataset]:
    """The upstream splits of a data set, by upstream name, as ``datasets`` with their own columns.

    A single file is the split ``train``; a directory gives one split per supported file (its stem). Errors name
    ``key``: a missing location, an unreadable file (with the reader's reason), a hub id that is not available
    offline (with how to make it available).
    """
    if is_hub(location):
        return _read_hub(location, revision, key)
    path = resolve_path(location, data_dir)
    if path.is_file():
        return {"train": read_file(path, kind, delimiter)}
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in BUILDERS and p.is_file())
        if not files:
            raise DataError(f"{path}: no data files ({', '.join(BUILDERS)}) in the directory named by {key}")
        return {file.stem: read_file(file, kind, delimiter) for file in files}
    raise DataError(f"{path}: file or directory not found (named by {key})")


def read_file(path: Path, kind: str, delimiter: str | None = None) -> datasets.Dataset:
    """One local file as a ``datasets.Dataset``: CoNLL / standoff through :mod:`fedbt.data.ner` for token
    classification, every other format through ``datasets.load_dataset(<builder>, data_files=...)``."""
    import datasets

    datasets.disable_progress_bars()
    if kind == "token_classification" and path.suffix == ".txt":
        from fedbt.data.ner import conll_dataset

        return conll_dataset(path, delimiter or "\t")
    if kind == "token_classification" and path.suffix == ".jsonl" and _is_standoff(path):
        from fedbt.data.ner import standoff_dataset

        return standoff_dataset(path)
    builder = BUILDERS[path.suffix]
    options = {"delimiter": delimiter or ("\t" if path.suffix == ".tsv" else ",")} if builder == "csv" else {}
    if builder == "csv" and path.suffix == ".tsv":
        options["quoting"] = 3  # csv.QUOTE_NONE: GLUE's TSV files hold bare quote characters
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as error:  # the builders raise many types; the reason is in the message
        cause = getattr(error, "__cause__", None) or error
        raise DataError(f"{path}: cannot be read as {builder} ({type(cause).__name__}: {cause})") from error


def _is_standoff(path: Path) -> bool:
    with path.open(encoding="utf-8") as handle:
        first = next((line for line in handle if line.strip()), "{}")
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and "entities" in row and "text" in row


def _read_hub(location: str, revision: str | None, key: str) -> dict[str, datasets.Dataset]:
    import datasets

    dataset_id, config = hub_id(location)
    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_dataset(dataset_id, config, revision=revision)
    except Exception as error:
        if offline():
            raise ConfigError(
                key,
                f"{location} is not in the local datasets cache and the hub is offline (HF_HUB_OFFLINE=1 / "
                "HF_DATASETS_OFFLINE=1). Make it available by running once where the hub is reachable with "
                "HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 (it is then cached for offline use), or download its files "
                f"and set {key} to their local directory",
            ) from error
        raise DataError(f"{key}: cannot load {location} from the hub ({type(error).__name__}: {error})") from error
    return dict(loaded)


def upstream_split(available: dict[str, object], ours: str, declared: dict[str, str], where: str) -> str:
    """The upstream split that is our split ``ours``: the declared one, else the first alias present."""
    if ours in declared:
        if declared[ours] not in available:
            raise DataError(f"{where}: split {declared[ours]!r} (for {ours}) not found; found: {', '.join(available)}")
        return declared[ours]
    for alias in SPLIT_ALIASES.get(ours, (ours,)):
        if alias in available:
            return alias
    raise DataError(
        f"{where}: no split for {ours!r} (looked for {', '.join(SPLIT_ALIASES.get(ours, (ours,)))}); found: "
        f"{', '.join(available)}; declare it under splits"
    )


# ----------------------------------------------------------------------------------- fingerprint


def fingerprint(declaration: dict, location: str, data_dir: str | Path, upstream=None) -> str:
    """sha256 of what a data set's content is: its declaration, and the bytes of its local files (hub data sets:
    the id, revision and the fingerprints ``datasets`` gives the loaded splits)."""
    digest = hashlib.sha256(json.dumps(declaration, sort_keys=True, default=str).encode())
    if is_hub(location):
        digest.update(json.dumps({k: getattr(v, "_fingerprint", "") for k, v in (upstream or {}).items()}).encode())
        return digest.hexdigest()
    path = resolve_path(location, data_dir)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def slug(name: str) -> str:
    """A file-name-safe form of a data set name (paths and hub ids included)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", name.removeprefix(HF_PREFIX)).strip("-.")
    return text[-60:] or "data"
