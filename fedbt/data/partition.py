"""Client partitions of a dataset's example indices, computed once per parameter set and cached as JSON.

Schemes (all seeded with ``numpy.random.default_rng(seed)``):

- ``iid``: a random permutation cut into near-equal blocks.
- ``uniform``: the paper's "uniform" split, near-equal contiguous blocks in file order.
- ``skewed``: the paper's split, example goes to client ``floor(x / (10 / N))`` clipped to ``[0, N-1]``
  with ``x ~ Normal(5, 2)`` drawn per example (bell-shaped client sizes).
- ``dirichlet``: label skew, each class's examples spread over clients with proportions ~ Dir(alpha).
- ``quantity``: quantity skew, client sizes proportional to one Dir(alpha) draw, over a random permutation.
- ``papers``: the paper's S2ORC split, client ``k`` holds the ``k``-th block of ``papers_per_client`` consecutive
  papers (``groups``: the paper of each example, e.g. from :mod:`fedbt.data.s2orc`); papers after the last
  client's block are not used.

Clients left with fewer than ``min_size`` examples are topped up by moving randomly chosen examples, one
at a time, from the currently largest client. Each client's indices are returned sorted ascending.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedbt.errors import ConfigError, DataError

SCHEMES = ("iid", "uniform", "skewed", "dirichlet", "quantity", "papers")

_SCHEME_KEY = "federation.partition.scheme"
_DATASET_ID = re.compile(r"[A-Za-z0-9._-]+")


def partition_indices(
    n: int,
    clients: int,
    scheme: str,
    seed: int,
    labels: Sequence[int] | None = None,
    alpha: float = 0.5,
    min_size: int = 1,
    groups: Sequence[int] | None = None,
    papers_per_client: int = 12000,
) -> list[list[int]]:
    """Split ``range(n)`` over ``clients`` clients by ``scheme``; every index appears exactly once (``papers``:
    at most once).

    Raises :class:`ConfigError` for an unknown scheme, ``dirichlet`` without ``labels``, ``papers`` without
    ``groups``, a non-positive ``alpha`` or client count, or ``n < clients * min_size``.
    """
    _check(n, clients, scheme, labels, alpha, min_size)
    rng = np.random.default_rng(seed)
    if scheme == "papers":
        return _paper_blocks(n, clients, groups, papers_per_client)
    if scheme == "iid":
        owner = np.empty(n, dtype=np.int64)
        owner[rng.permutation(n)] = _block_owners(n, clients)
    elif scheme == "uniform":
        owner = _block_owners(n, clients)
    elif scheme == "skewed":
        x = rng.normal(5.0, 2.0, size=n)
        owner = np.clip(np.floor(x / (10.0 / clients)), 0, clients - 1).astype(np.int64)
    elif scheme == "dirichlet":
        owner = _dirichlet_owners(np.asarray(labels), clients, alpha, rng)
    else:  # quantity
        proportions = rng.dirichlet(np.full(clients, alpha))
        owner = np.empty(n, dtype=np.int64)
        owner[rng.permutation(n)] = _cut_owners(n, proportions)
    _top_up(owner, clients, min_size, rng)
    return [np.flatnonzero(owner == client).tolist() for client in range(clients)]


def _check(n: int, clients: int, scheme: str, labels: Sequence[int] | None, alpha: float, min_size: int) -> None:
    if scheme not in SCHEMES:
        raise ConfigError(_SCHEME_KEY, f"unknown scheme '{scheme}'; known schemes: {', '.join(SCHEMES)}")
    if clients < 1:
        raise ConfigError("federation.clients", f"got {clients}, must be >= 1")
    if alpha <= 0:
        raise ConfigError("federation.partition.alpha", f"got {alpha}, must be > 0")
    if min_size < 0:
        raise ConfigError("federation.partition.min_size", f"got {min_size}, must be >= 0")
    if n < clients * min_size:
        raise ConfigError(
            "federation.partition.min_size",
            f"cannot give each of {clients} clients at least {min_size} examples from only {n} "
            f"(needs n >= clients * min_size = {clients * min_size}); lower min_size or the client count",
        )
    if scheme == "dirichlet":
        if labels is None:
            raise ConfigError(_SCHEME_KEY, "dirichlet needs a labelled dataset (a task), got no labels")
        if len(labels) != n:
            raise DataError(f"dirichlet partition: got {len(labels)} labels for n = {n} examples")


def _paper_blocks(n: int, clients: int, groups: Sequence[int] | None, per_client: int) -> list[list[int]]:
    if groups is None or len(groups) != n:
        raise ConfigError(
            _SCHEME_KEY,
            "papers needs a corpus that names the paper of each sentence (fedbt "
            "prepare-corpus s2orc; columns: {group: paper})",
        )
    if per_client < 1:
        raise ConfigError("federation.partition.papers_per_client", f"got {per_client}, must be >= 1")
    _, rank = np.unique(np.asarray(groups), return_inverse=True)  # papers numbered 0, 1, ... in id order
    owner = rank // per_client
    return [np.flatnonzero(owner == client).tolist() for client in range(clients)]


def _block_owners(n: int, clients: int) -> np.ndarray:
    """Owner of each position when ``n`` positions are cut into near-equal contiguous blocks."""
    sizes = [n // clients + (client < n % clients) for client in range(clients)]
    return np.repeat(np.arange(clients), sizes)


def _cut_owners(n: int, proportions: np.ndarray) -> np.ndarray:
    """Owner of each of ``n`` positions when cut into contiguous blocks of the given proportions."""
    cuts = (np.cumsum(proportions)[:-1] * n).astype(np.int64)
    return np.repeat(np.arange(len(proportions)), np.diff(np.concatenate(([0], cuts, [n]))))


def _dirichlet_owners(labels: np.ndarray, clients: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    owner = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        owner[members] = _cut_owners(len(members), rng.dirichlet(np.full(clients, alpha)))
    return owner


def _top_up(owner: np.ndarray, clients: int, min_size: int, rng: np.random.Generator) -> None:
    """Move random examples from the largest client to clients below ``min_size`` (in place).

    Terminates because ``n >= clients * min_size``: while a client is short, the largest one holds more
    than ``min_size``.
    """
    counts = np.bincount(owner, minlength=clients)
    while counts.min() < min_size:
        short, largest = int(np.argmin(counts)), int(np.argmax(counts))
        moved = rng.choice(np.flatnonzero(owner == largest))
        owner[moved] = short
        counts[short] += 1
        counts[largest] -= 1


# ------------------------------------------------------------------------------------------ caching


@dataclass(frozen=True)
class Partition:
    """A saved partition: example indices per client, their digest and the JSON file holding them."""

    clients: list[list[int]]
    digest: str
    path: Path

    def sizes(self) -> list[int]:
        """Number of examples per client."""
        return [len(indices) for indices in self.clients]


def partition_digest(meta: dict[str, Any], clients: list[list[int]]) -> str:
    """sha256 hex of the canonical JSON (sorted keys, no spaces) of ``{"meta": ..., "clients": ...}``."""
    canonical = json.dumps({"meta": meta, "clients": clients}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_or_create_partition(
    dataset_id: str,
    n: int,
    clients: int,
    scheme: str,
    seed: int,
    out_dir: str | Path,
    labels: Sequence[int] | None = None,
    alpha: float = 0.5,
    min_size: int = 1,
    groups: Sequence[int] | None = None,
    papers_per_client: int = 12000,
) -> Partition:
    """Load the partition for these parameters from ``out_dir``, or compute and save it (atomically).

    The file is ``<dataset_id>__n<n>__<scheme>__c<clients>__s<seed>__a<alpha>__m<min_size>.json`` and
    holds ``meta`` (the parameters, plus the sha256 of ``labels`` if given), ``clients`` and ``sha256``.
    Loading raises :class:`DataError` if the file is malformed, its digest does not match its content,
    or its ``meta`` disagrees with the request (e.g. the labels changed).
    """
    if not _DATASET_ID.fullmatch(dataset_id):
        raise DataError(f"dataset_id {dataset_id!r} must match [A-Za-z0-9._-]+ (it names the partition file)")
    alpha = float(alpha)
    meta = {
        "dataset_id": dataset_id,
        "n": n,
        "clients": clients,
        "scheme": scheme,
        "seed": seed,
        "alpha": alpha,
        "min_size": min_size,
        "labels_sha256": None if labels is None else _labels_digest(labels),
    }
    if scheme == "papers":
        meta.update(
            groups_sha256=None if groups is None else _labels_digest(groups), papers_per_client=papers_per_client
        )
    name = f"{dataset_id}__n{n}__{scheme}__c{clients}__s{seed}__a{alpha}__m{min_size}.json"
    path = Path(out_dir) / name
    if path.is_file():
        return _load(path, meta)
    assignment = partition_indices(n, clients, scheme, seed, labels, alpha, min_size, groups, papers_per_client)
    digest = partition_digest(meta, assignment)
    _write_atomic(path, {"meta": meta, "clients": assignment, "sha256": digest})
    return Partition(assignment, digest, path)


def _labels_digest(labels: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps([int(label) for label in labels]).encode()).hexdigest()


def _load(path: Path, meta: dict[str, Any]) -> Partition:
    try:
        stored = json.loads(path.read_text())
        stored_meta, assignment, digest = stored["meta"], stored["clients"], stored["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a valid partition file ({error}); delete it to recompute") from error
    if partition_digest(stored_meta, assignment) != digest:
        raise DataError(f"{path}: sha256 does not match the content (edited or corrupted); delete it to recompute")
    if stored_meta != meta:
        differing = sorted(k for k in meta.keys() | stored_meta.keys() if meta.get(k) != stored_meta.get(k))
        raise DataError(
            f"{path}: saved partition disagrees with the request on {', '.join(differing)}; delete it to recompute"
        )
    return Partition(assignment, digest, path)


def _write_atomic(path: Path, content: dict[str, Any]) -> None:
    """Write JSON to ``path`` via a temp file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(content, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
