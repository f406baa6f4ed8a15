"""Unlabeled domain corpora for masked-LM further pre-training, one sentence per example (the paper's setup).

The shipped corpus files hold one document per line. :func:`load_corpus` splits each line into sentences
with :func:`split_sentences`, drops sentences shorter than :data:`MIN_WORDS` words and keeps file order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fedbt.errors import ConfigError, DataError

MIN_WORDS = 5
"""Sentences with fewer whitespace-separated words than this are dropped."""

_SENTENCE_BOUNDARY = re.compile(r"(?<=[.?!])\s+(?=[A-Z0-9])")


@dataclass(frozen=True)
class CorpusSpec:
    """Where a corpus lives under the data directory."""

    name: str
    folder: str
    file: str
    description: str


CORPORA: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in (
        CorpusSpec(
            "biology",
            "corpus_biology",
            "craft_fulltext.txt",
            "CRAFT full-text PMC articles (mouse genomics), first 37 articles",
        ),
        CorpusSpec(
            "cs",
            "corpus_cs",
            "cs_abstracts.txt",
            "computer-science paper abstracts (SciTLDR-A), first 1,367 abstracts",
        ),
        CorpusSpec(
            "medicine",
            "corpus_medicine",
            "pubmedqa_abstracts.txt",
            "PubMed abstracts from PubMedQA, first 879 abstracts",
        ),
        CorpusSpec(
            "sst2",
            "sst2",
            "sentences.txt",
            "SST-2 movie-review sentences (GLUE train split): the general-domain corpus for distilling students",
        ),
    )
}


def split_sentences(text: str) -> list[str]:
    """Split ``text`` after ``.``, ``?`` or ``!`` followed by whitespace and an uppercase letter or digit.

    A deliberately simple rule (abbreviations such as "Fig. 2" are split too); returns stripped,
    non-empty sentences in order.
    """
    return [sentence.strip() for sentence in _SENTENCE_BOUNDARY.split(text) if sentence.strip()]


def load_corpus(
    name: str, data_dir: str | Path = "data", max_examples: int | None = None, key: str = "data.corpus"
) -> list[str]:
    """Sentences of at least ``MIN_WORDS`` words of corpus ``name``, in file order, at most ``max_examples``.

    An unknown name is a :class:`ConfigError` on ``key`` listing the known corpora; a missing file is a
    :class:`DataError` naming its path.
    """
    if name not in CORPORA:
        raise ConfigError(key, f"unknown corpus '{name}'; known corpora: {', '.join(sorted(CORPORA))}")
    if max_examples is not None and max_examples < 0:
        raise ConfigError("data.max_examples", f"got {max_examples}, must be >= 0 or null")
    spec = CORPORA[name]
    path = Path(data_dir) / spec.folder / spec.file
    if not path.is_file():
        raise DataError(f"{path}: corpus file not found (the repository's data/ folder ships it)")
    with path.open(encoding="utf-8") as handle:
        sentences = [s for line in handle for s in split_sentences(line) if len(s.split()) >= MIN_WORDS]
    return sentences if max_examples is None else sentences[:max_examples]
