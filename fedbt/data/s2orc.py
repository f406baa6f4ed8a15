"""Building a domain corpus from S2ORC the way the paper did: papers of one field, abstract and body paragraphs,
split into sentences, one per line.

S2ORC (Lo et al., ACL 2020; ODC-By 1.0) needs an API key, so users bring its shards: ``metadata_*.jsonl[.gz]``
(``paper_id``, ``abstract``, ``mag_field_of_study``, ``has_pdf_parse``, ...) and ``pdf_parses_*.jsonl[.gz]``
(``paper_id``, ``abstract`` and ``body_text`` as lists of paragraphs ``{"section", "text", ...}``).
:func:`prepare_s2orc` keeps the papers whose ``mag_field_of_study`` lists the field, in shard order, takes each
paper's parsed abstract and body paragraphs (the metadata abstract when it has no parse), splits every paragraph
into sentences (:func:`fedbt.data.corpus.split_sentences`, segtok), drops sentences of fewer than ``min_words``
words, and writes ``<out>/sentences.jsonl`` (one sentence per line: ``{"text": ..., "paper": <paper index>}``),
``<out>/papers.tsv`` (paper index, S2ORC id, sentences) and ``<out>/manifest.json`` (counts, inputs and sha256 of
the output). Use the folder as a corpus with :data:`SOURCE_TEMPLATE`; the partition scheme ``papers`` gives each
client ``papers_per_client`` consecutive papers (the paper: 12,000).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fedbt.data.corpus import MIN_WORDS, split_sentences
from fedbt.errors import DataError

log = logging.getLogger(__name__)
SENTENCES = "sentences.jsonl"
SOURCE_TEMPLATE = {"kind": "corpus", "columns": {"text": "text", "group": "paper"}, "segment": False, "min_words": 1}
"""How a config declares a prepared folder under ``sources`` (plus ``location: <folder>/sentences.jsonl``)."""


@dataclass
class PrepareSettings:
    """``fedbt prepare-corpus s2orc`` flags."""

    field: str
    metadata: list[str]
    pdf_parses: list[str] = field(default_factory=list)
    out: str = "data/s2orc"
    max_papers: int | None = None
    full_text_only: bool = False
    min_words: int = MIN_WORDS


def shard_files(paths: Iterable[str], prefix: str) -> list[Path]:
    """The shard files named by ``paths`` (files, or folders holding ``<prefix>*.jsonl[.gz]``), in name order."""
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            files += sorted(
                p for p in entry.iterdir() if p.name.startswith(prefix) and p.name.endswith((".jsonl", ".jsonl.gz"))
            )
        elif entry.is_file():
            files.append(entry)
        else:
            raise DataError(f"{entry}: S2ORC shard or folder not found")
    if not files:
        raise DataError(f"no {prefix}*.jsonl[.gz] shards in {', '.join(map(str, paths))}")
    return files


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) per non-empty line of a JSON-lines file (gzip by suffix); bad lines name the line."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}: line {number}: malformed JSON ({error.msg})") from error


def field_papers(settings: PrepareSettings) -> dict[str, dict]:
    """Metadata of the papers of ``settings.field``, by paper id, in shard order."""
    papers: dict[str, dict] = {}
    for shard in shard_files(settings.metadata, "metadata"):
        for number, paper in read_jsonl(shard):
            if "paper_id" not in paper:
                raise DataError(f"{shard}: line {number}: no paper_id (not an S2ORC metadata shard?)")
            if settings.field in (paper.get("mag_field_of_study") or []):
                papers[str(paper["paper_id"])] = paper
    return papers


def parsed_paragraphs(settings: PrepareSettings, wanted: set[str]) -> dict[str, list[str]]:
    """Abstract + body paragraphs of the parsed papers among ``wanted``."""
    paragraphs: dict[str, list[str]] = {}
    if not settings.pdf_parses:
        return paragraphs
    for shard in shard_files(settings.pdf_parses, "pdf_parses"):
        for _, parse in read_jsonl(shard):
            paper_id = str(parse.get("paper_id"))
            if paper_id in wanted:
                blocks = [*(parse.get("abstract") or []), *(parse.get("body_text") or [])]
                paragraphs[paper_id] = [b["text"] for b in blocks if isinstance(b, dict) and b.get("text")]
    return paragraphs


def prepare_s2orc(settings: PrepareSettings) -> dict:
    """Write the field's corpus to ``settings.out`` (see the module docstring); returns the manifest."""
    papers = field_papers(settings)
    parsed = parsed_paragraphs(settings, set(papers))
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    counts = {"papers": 0, "with_full_text": 0, "abstract_only": 0, "sentences": 0, "words": 0}
    with (out / SENTENCES).open("w", encoding="utf-8") as sentences, (out / "papers.tsv").open("w") as index:
        index.write("paper\tpaper_id\tsentences\n")
        for paper_id, paper in papers.items():
            if settings.max_papers is not None and counts["papers"] == settings.max_papers:
                break
            paragraphs = parsed.get(paper_id)
            if paragraphs is None and (settings.full_text_only or not paper.get("abstract")):
                continue
            kept = [
                s
                for text in (paragraphs or [paper["abstract"]])
                for s in split_sentences(text)
                if len(s.split()) >= settings.min_words
            ]
            if not kept:
                continue
            for sentence in kept:
                line = json.dumps({"text": sentence, "paper": counts["papers"]}, ensure_ascii=False) + "\n"
                sentences.write(line)
                digest.update(line.encode())
                counts["words"] += len(sentence.split())
            index.write(f"{counts['papers']}\t{paper_id}\t{len(kept)}\n")
            counts["papers"] += 1
            counts["sentences"] += len(kept)
            counts["with_full_text" if paragraphs is not None else "abstract_only"] += 1
    manifest = {
        "source": "S2ORC (Lo et al., ACL 2020), ODC-By 1.0",
        "field": settings.field,
        **counts,
        "min_words": settings.min_words,
        "splitter": "segtok.segmenter.split_single",
        "metadata": [str(p) for p in shard_files(settings.metadata, "metadata")],
        "pdf_parses": [str(p) for p in shard_files(settings.pdf_parses, "pdf_parses")] if settings.pdf_parses else [],
        "sentences_sha256": digest.hexdigest(),
        "source_declaration": {
            **SOURCE_TEMPLATE,
            "location": str(out / SENTENCES),
            "sizes": {"train": counts["sentences"]},
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log.info(
        "%s: %d papers (%d with full text), %d sentences",
        out,
        counts["papers"],
        counts["with_full_text"],
        counts["sentences"],
    )
    return manifest
