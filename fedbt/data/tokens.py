"""Tokenise once: an on-disk token cache per (source fingerprint, tokenizer, max_length), memory-mapped by every
job of a study.

A cache holds, per split, the token ids of all examples in one flat ``int32`` file, their ``offsets`` (example
``i`` is ``ids[offsets[i]:offsets[i + 1]]``) and their labels (one per example for classification; one per
token, aligned with the ids, for token classification). It lives in ``<cache_dir>/tokens/<name>-<key>/`` where
``key`` hashes the source's fingerprint (its declaration and file bytes, :func:`fedbt.data.sources.fingerprint`),
the tokenizer (its serialised vocabulary and rules), ``max_length`` and the encoder; a changed source, tokenizer
or length is another key, so a stale cache is never read. It is built in a temporary folder and renamed into
place, so jobs that build the same cache at once all end with one complete copy. Jobs read it with
``numpy.memmap``: the operating system shares the pages, no job holds the corpus as Python lists, and a
partition is a list of row indices into it (:class:`Examples`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbt.data.sources import slug

CACHE_VERSION = 1
META = "meta.json"
CHUNK = 4096
"""Sentences tokenised per call while a corpus cache is built."""


@dataclass(frozen=True)
class TokenSplit:
    """One split of a token cache (arrays usually memory-mapped)."""

    ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray | None = None
    token_labels: bool = False
    """True when ``labels`` has one entry per token (token classification), False for one per example."""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, row: int) -> dict:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        example = {"input_ids": self.ids[start:end]}
        if self.labels is not None:
            example["labels" if self.token_labels else "label"] = (
                self.labels[start:end] if self.token_labels else int(self.labels[row])
            )
        return example


class Examples(Sequence):
    """Rows of a :class:`TokenSplit` in a given order: a view (nothing copied); items are example dicts."""

    def __init__(self, split: TokenSplit, rows: Sequence[int] | np.ndarray | None = None):
        self.split = split
        self.rows = np.arange(len(split), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Examples(self.split, self.rows[index])
        return self.split.example(int(self.rows[index]))

    def select(self, rows: Sequence[int] | np.ndarray) -> Examples:
        """The examples at positions ``rows`` of this view."""
        return Examples(self.split, self.rows[np.asarray(rows, dtype=np.int64)])

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per example, in order (for length-grouped batches)."""
        return self.split.lengths[self.rows]

    @property
    def labels(self) -> list[int] | None:
        """Per-example labels (classification), for label-skew partitions; None otherwise."""
        if self.split.labels is None or self.split.token_labels:
            return None
        return self.split.labels[self.rows].tolist()


def pool(parts: Sequence[Sequence[dict]]) -> Sequence[dict]:
    """Several example sequences as one (centralised training pools the clients): one view when they are views of
    one split, else a list."""
    if parts and all(isinstance(p, Examples) and p.split is parts[0].split for p in parts):
        return Examples(parts[0].split, np.concatenate([p.rows for p in parts]))
    return [example for part in parts for example in part]


def example_lengths(examples: Sequence[dict]) -> np.ndarray | None:
    """Tokens per example (None for examples without token ids, e.g. images)."""
    lengths = getattr(examples, "lengths", None)
    if lengths is not None:
        return np.asarray(lengths)
    if examples and "input_ids" in examples[0]:
        return np.fromiter((len(e["input_ids"]) for e in examples), dtype=np.int64, count=len(examples))
    return None


# ------------------------------------------------------------------------------------ the cache


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what a tokenizer maps text to: its class, serialised rules and vocabulary (fast tokenizers; the
    vocabulary otherwise) and special tokens, without the call-time truncation/padding state."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        body = json.dumps(state, sort_keys=True)
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps(sorted(map(str, tokenizer.all_special_tokens)))
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{specials}\n{body}".encode()).hexdigest()


def cache_key(source_fingerprint: str, tokenizer_digest: str, max_length: int, encoder: str) -> str:
    parts = {
        "version": CACHE_VERSION,
        "source": source_fingerprint,
        "tokenizer": tokenizer_digest,
        "max_length": max_length,
        "encoder": encoder,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class TokenCache:
    """A built cache: its folder and metadata; :meth:`split` memory-maps one split."""

    path: Path
    meta: dict

    def split(self, name: str) -> TokenSplit:
        info = self.meta["splits"][name]
        ids = np.memmap(self.path / f"{name}.ids", dtype=np.int32, mode="r", shape=(info["tokens"],))
        offsets = np.load(self.path / f"{name}.offsets.npy", mmap_mode="r")
        labels_path = self.path / f"{name}.labels.npy"
        labels = np.load(labels_path, mmap_mode="r") if labels_path.is_file() else None
        return TokenSplit(ids, offsets, labels, token_labels=info.get("token_labels", False))


def open_or_build(
    cache_dir: str | Path,
    name: str,
    key: str,
    build: Callable[[], Iterable[tuple[str, Iterable[dict]]]],
    describe: dict,
) -> TokenCache:
    """The cache ``key`` (named after ``name``) from ``cache_dir``, built first from ``build()`` (``(split,
    examples)`` pairs) when absent. ``describe`` goes into its metadata."""
    target = Path(cache_dir) / "tokens" / f"{slug(name)}-{key[:16]}"
    if (target / META).is_file():
        return TokenCache(target, json.loads((target / META).read_text()))
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        splits = {split: _write_split(scratch, split, examples) for split, examples in build()}
        meta = {"key": key, "name": name, **describe, "splits": splits}
        (scratch / META).write_text(json.dumps(meta, indent=1))
        try:
            os.rename(scratch, target)
        except OSError:  # another job finished the same cache first: keep that one
            if not (target / META).is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return TokenCache(target, json.loads((target / META).read_text()))


def _write_split(folder: Path, split: str, examples: Iterable[dict]) -> dict:
    """Write one split's ids, offsets and labels; returns its counts."""
    offsets = [0]
    labels: list = []
    token_labels = False
    with (folder / f"{split}.ids").open("wb") as ids:
        for example in examples:
            tokens = np.asarray(example["input_ids"], dtype=np.int32)
            ids.write(tokens.tobytes())
            offsets.append(offsets[-1] + len(tokens))
            if "labels" in example:
                token_labels = True
                labels.extend(example["labels"])
            elif "label" in example:
                labels.append(int(example["label"]))
    np.save(folder / f"{split}.offsets.npy", np.asarray(offsets, dtype=np.int64))
    if labels:
        np.save(folder / f"{split}.labels.npy", np.asarray(labels, dtype=np.int64))
    return {"examples": len(offsets) - 1, "tokens": offsets[-1], "token_labels": token_labels}


def tokenize_sentences(sentences: Iterable, tokenizer, max_length: int) -> Iterator[dict]:
    """``{"input_ids"}`` per sentence, truncated to ``max_length``, tokenised :data:`CHUNK` at a time; items that
    are ``(sentence, group)`` pairs keep the group as the example's ``label``."""
    chunk: list = []
    for item in sentences:
        chunk.append(item)
        if len(chunk) == CHUNK:
            yield from _encode(chunk, tokenizer, max_length)
            chunk = []
    if chunk:
        yield from _encode(chunk, tokenizer, max_length)


def _encode(chunk: list, tokenizer, max_length: int) -> Iterator[dict]:
    grouped = isinstance(chunk[0], tuple)
    texts = [item[0] for item in chunk] if grouped else chunk
    for item, ids in zip(chunk, tokenizer(texts, truncation=True, max_length=max_length)["input_ids"], strict=True):
        yield {"input_ids": ids, "label": int(item[1])} if grouped else {"input_ids": ids}
