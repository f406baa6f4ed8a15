"""NER data: CoNLL-style BIO files, JNLPBA standoff documents converted to BIO, BIO validation and repair.

Every reader returns :class:`TaggedSentence` objects that remember the 1-based source line of each token, so
that any later check (unknown tag, malformed BIO) can name the file and line to fix.

BIO rule (conlleval): an entity starts with ``B-X`` and continues with ``I-X``. A file may instead start an
entity with ``I-X`` (after ``O``, after another type, or at a sentence start; SciBERT's BC5CDR does this
thousands of times). :func:`validate_bio` repairs such a tag to ``B-X`` and counts it, or with
``strict=True`` raises. The repair never changes which entities a sequence holds under conlleval (and
seqeval's default mode), which read a stray ``I-X`` as the start of a new entity.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from fedbt.errors import DataError

DOCSTART = "-DOCSTART-"

TOKEN = re.compile(r"\w+(?:[-./+]\w+)*\+?|[^\w\s]")
"""A standoff token: word characters joined by inner ``- . / +`` with an optional trailing ``+`` (``IL-2``,
``PU.1``, ``C/EBP``, ``Ca2+``), or one other non-space character. Close to GENIA's tokens: on the 177 JNLPBA
dev abstracts whose text matches SciBERT's ``dev.txt``, 98.2 % of the tokens made here are tokens there and
99.2 % of theirs are made here, and the entities are identical."""

SENTENCE_BREAK = re.compile(r"(?<=[.?!])(?<![\s(][A-Z]\.)\s+(?=[A-Z0-9(\[])|\n")
"""A sentence ends at a line break (title / abstract) or at ``.``/``?``/``!`` followed by whitespace and an
uppercase letter, digit or opening bracket, except after an initial (``S. Miyatake``). On the same 177
abstracts: 1,569 sentences against 1,568 there, 97.8 % of the boundaries in common."""


@dataclass
class TaggedSentence:
    """One sentence: its tokens, their BIO tags and the 1-based line each token was read from."""

    tokens: list[str]
    tags: list[str]
    lines: list[int]


def bio_labels(types: Sequence[str]) -> tuple[str, ...]:
    """The BIO tag list ``("O", "B-<t1>", "I-<t1>", "B-<t2>", ...)`` for entity types in the given order."""
    return ("O", *(f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")))


def read_conll(path: Path, delimiter: str = "\t", columns: int | None = None) -> list[TaggedSentence]:
    """The sentences of a CoNLL-style file, in order.

    One token per line with exactly ``columns`` fields (default: as many as the first token line has, at least
    2) separated by ``delimiter`` (token first, tag last); a blank line ends a sentence; a ``-DOCSTART-`` line
    separates documents (and ends a sentence). A line with another number of fields is a :class:`DataError`
    naming the file and line.
    """
    sentences: list[TaggedSentence] = []
    current = TaggedSentence([], [], [])
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith(DOCSTART):
                if current.tokens:
                    sentences.append(current)
                    current = TaggedSentence([], [], [])
                continue
            fields = line.split(delimiter)
            columns = columns or max(len(fields), 2)
            if len(fields) != columns:
                raise DataError(
                    f"{path}: line {line_number}: expected {columns} fields separated by {delimiter!r} "
                    f"(token first, tag last), found {len(fields)}"
                )
            current.tokens.append(fields[0])
            current.tags.append(fields[-1])
            current.lines.append(line_number)
    if current.tokens:
        sentences.append(current)
    return sentences


def read_standoff(path: Path) -> list[TaggedSentence]:
    """The sentences of a JSON-lines file of standoff documents, converted by :func:`standoff_to_bio`.

    Each line is ``{"text": str, "entities": [[start, end, type], ...], ...}`` (character offsets, end
    exclusive); each token's line is its document's line. Documents flagged ``in_scibert_dev`` are skipped:
    they are SciBERT's JNLPBA dev split, shipped separately as ``dev.txt``.
    """
    sentences: list[TaggedSentence] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                document = json.loads(line)
                text, entities = document["text"], [(int(s), int(e), str(t)) for s, e, t in document["entities"]]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise DataError(
                    f"{path}: line {line_number}: expected a JSON object with 'text' and "
                    f"'entities' = [[start, end, type], ...] ({error})"
                ) from error
            if document.get("in_scibert_dev"):
                continue
            if any(not 0 <= start < end <= len(text) for start, end, _ in entities):
                raise DataError(f"{path}: line {line_number}: an entity span lies outside the text or is empty")
            for tokens, tags in standoff_to_bio(text, entities):
                sentences.append(TaggedSentence(tokens, tags, [line_number] * len(tokens)))
    return sentences


def standoff_to_bio(text: str, entities: Sequence[tuple[int, int, str]]) -> list[tuple[list[str], list[str]]]:
    """Tokenise, sentence-split and BIO-tag one document; returns ``[(tokens, tags), ...]`` per sentence.

    * Overlapping (nested) entities: the longest is kept (ties: the one starting first); entities that
      overlap a kept one are dropped.
    * Tokens are :data:`TOKEN` matches inside the pieces of text between entity boundaries, so an entity
      boundary inside a word splits the word there (GENIA tokenises at entity boundaries the same way:
      ``IL-2-dependent`` with entity ``IL-2`` gives ``IL-2`` ``-`` ``dependent``).
    * Sentences end at :data:`SENTENCE_BREAK` matches, except inside an entity.
    * The first token of an entity is tagged ``B-<type>``, the others ``I-<type>``, every other token ``O``.
    """
    kept = _drop_overlaps(entities)
    boundaries = sorted({0, len(text)} | {offset for start, end, _ in kept for offset in (start, end)})
    spans = [match.span() for piece in pairwise(boundaries) for match in TOKEN.finditer(text, *piece)]
    starts = [start for start, _ in spans]
    tags = ["O"] * len(spans)
    for start, end, kind in kept:
        first = bisect_left(starts, start)
        for index in range(first, bisect_left(starts, end)):
            tags[index] = f"{'B' if index == first else 'I'}-{kind}"

    breaks = [
        match.start()
        for match in SENTENCE_BREAK.finditer(text)
        if not any(start < match.start() < end for start, end, _ in kept)
    ]
    sentences: dict[int, tuple[list[str], list[str]]] = {}
    for (start, end), tag in zip(spans, tags, strict=True):
        tokens, sentence_tags = sentences.setdefault(bisect_right(breaks, start), ([], []))
        tokens.append(text[start:end])
        sentence_tags.append(tag)
    return list(sentences.values())


def _drop_overlaps(entities: Sequence[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """The entities without overlaps, by start: longest first (ties: earliest start), dropping any that
    overlaps one already kept."""
    kept: list[tuple[int, int, str]] = []
    for start, end, kind in sorted(entities, key=lambda entity: (entity[0] - entity[1], entity[0])):
        if all(end <= other_start or other_end <= start for other_start, other_end, _ in kept):
            kept.append((start, end, kind))
    return sorted(kept)


def validate_bio(sentences: Sequence[TaggedSentence], path: Path | str, strict: bool = False) -> int:
    """Check the BIO tags of ``sentences`` (from ``path``) and repair them in place; returns the repairs.

    Every tag must be ``O``, ``B-<type>`` or ``I-<type>``. An ``I-X`` that does not follow ``B-X`` or
    ``I-X`` in its sentence becomes ``B-X`` (counted), or with ``strict=True`` is a :class:`DataError`
    naming the file and line. A tag of another form is always a :class:`DataError`.
    """
    repairs = 0
    for sentence in sentences:
        previous = "O"
        for index, (tag, line) in enumerate(zip(sentence.tags, sentence.lines, strict=True)):
            if tag != "O" and (tag[:2] not in ("B-", "I-") or len(tag) == 2):
                raise DataError(f"{path}: line {line}: {tag!r} is not a BIO tag (O, B-<type> or I-<type>)")
            if tag.startswith("I-") and previous[2:] != tag[2:]:
                if strict:
                    raise DataError(
                        f"{path}: line {line}: {tag!r} follows {previous!r}; an entity must start with "
                        f"B-{tag[2:]} (strict BIO check; the default repairs it to B-{tag[2:]})"
                    )
                tag = sentence.tags[index] = f"B-{tag[2:]}"
                repairs += 1
            previous = tag
    return repairs


def sentences_dataset(sentences: Sequence[TaggedSentence]):
    """``datasets.Dataset`` of ``tokens``, ``tags`` (tag strings) and ``lines`` (source line per token)."""
    import datasets

    return datasets.Dataset.from_dict(
        {
            "tokens": [s.tokens for s in sentences],
            "tags": [s.tags for s in sentences],
            "lines": [s.lines for s in sentences],
        }
    )


def conll_dataset(path: Path, delimiter: str = "\t"):
    """A CoNLL file as a ``datasets.Dataset`` (see :func:`read_conll`, :func:`sentences_dataset`)."""
    return sentences_dataset(read_conll(path, delimiter))


def standoff_dataset(path: Path):
    """A standoff JSON-lines file as a ``datasets.Dataset`` of BIO sentences (see :func:`read_standoff`)."""
    return sentences_dataset(read_standoff(path))
