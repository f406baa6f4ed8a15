"""Shipped tasks and corpora load offline with the documented sizes; bad files fail with clear errors."""

from __future__ import annotations

import functools
import shutil
from collections import Counter
from pathlib import Path

import pytest

from fedbt.data import CORPORA, TASKS, get_task, load_corpus, load_task, split_sentences
from fedbt.data.corpus import MIN_WORDS
from fedbt.data.tasks import deal_splits
from fedbt.errors import ConfigError, DataError

DATA_DIR = Path(__file__).resolve().parents[1] / "data"

# Independent of TaskSpec: the counts documented in data/*/SOURCE.md (and DSP Table 2).
EXPECTED = {
    "chemprot": ({"train": 4169, "dev": 2427, "test": 3469}, 13),
    "citation_intent": ({"train": 1688, "dev": 114, "test": 139}, 6),
    "sciie": ({"train": 3219, "dev": 455, "test": 974}, 7),
    "rct": ({"train": 300, "dev": 100, "test": 100}, 5),
}


@functools.cache
def _shipped(name: str):
    return load_task(name, DATA_DIR)


def _copy_task(tmp_path: Path, folder: str) -> Path:
    """A writable copy of one shipped task folder; returns the data_dir to load it from."""
    shutil.copytree(DATA_DIR / folder, tmp_path / folder, copy_function=shutil.copyfile)
    return tmp_path


def _edit_line(path: Path, line_number: int, new_line: str | None) -> None:
    """Replace (or with None, delete) the 1-based line ``line_number`` of ``path``."""
    lines = path.read_text().splitlines(keepends=True)
    if new_line is None:
        del lines[line_number - 1]
    else:
        lines[line_number - 1] = new_line + "\n"
    path.write_text("".join(lines))


def test_registry_matches_expected_tasks():
    classification = {name: spec for name, spec in TASKS.items() if spec.kind == "classification"}
    assert set(classification) == set(EXPECTED)
    for name, spec in classification.items():
        assert spec.name == name
        assert spec.metrics == ("accuracy", "macro_f1")
        assert len(set(spec.labels)) == len(spec.labels)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_task_loads_with_exact_sizes_and_labels(name):
    sizes, n_labels = EXPECTED[name]
    dataset = _shipped(name)
    spec = get_task(name)
    assert {split: len(dataset[split]) for split in dataset} == sizes == spec.split_sizes
    assert len(spec.labels) == n_labels
    for split in ("train", "dev", "test"):
        assert dataset[split].column_names == ["text", "label"]
        assert dataset[split].features["label"].names == list(spec.labels)
        labels = dataset[split]["label"]
        assert all(isinstance(label, int) and 0 <= label < n_labels for label in labels)
        assert all(isinstance(text, str) and text for text in dataset[split]["text"])
    assert len(set(dataset["train"]["label"])) == n_labels


def test_rct_split_is_stratified_disjoint_and_deterministic():
    dataset = _shipped("rct")
    texts = {split: dataset[split]["text"] for split in dataset}
    assert len(set(texts["train"]) | set(texts["dev"]) | set(texts["test"])) == 500
    counts = {split: Counter(dataset[split]["label"]) for split in dataset}
    totals = counts["train"] + counts["dev"] + counts["test"]
    for split in ("dev", "test"):
        assert all(abs(counts[split][label] - total / 5) <= 1 for label, total in totals.items())
    assert load_task("rct", DATA_DIR)["dev"]["text"] == texts["dev"]


def test_deal_splits_cycles_within_each_label_and_keeps_file_order():
    texts = [f"row {i}" for i in range(10)]
    labels = [0] * 5 + [1] * 5
    dealt = deal_splits(texts, labels, (("train", 3), ("dev", 1), ("test", 1)))
    assert {split: len(idx) for split, idx in dealt.items()} == {"train": 6, "dev": 2, "test": 2}
    assert sorted(sum(dealt.values(), [])) == list(range(10))
    for split in ("dev", "test"):
        assert sorted(labels[i] for i in dealt[split]) == [0, 1]
        assert dealt[split] == sorted(dealt[split])


def test_get_task_unknown_lists_known_tasks():
    with pytest.raises(
        ConfigError,
        match="unknown task 'nope'; known tasks: bc5cdr, chemprot, cifar10, citation_intent, jnlpba, ncbi_disease, "
        "rct, scierc_ner, sciie",
    ):
        get_task("nope")
    with pytest.raises(ConfigError) as info:
        load_task("nope", DATA_DIR, key="evaluation.task")
    assert info.value.key == "evaluation.task"


def test_wrong_row_count_names_file(tmp_path):
    data_dir = _copy_task(tmp_path, "citation_intent")
    _edit_line(data_dir / "citation_intent" / "dev.jsonl", 7, None)
    with pytest.raises(DataError, match=r"citation_intent/dev\.jsonl: expected 114 rows, found 113"):
        load_task("citation_intent", data_dir)


def test_wrong_row_count_of_single_file_task(tmp_path):
    data_dir = _copy_task(tmp_path, "rct_sample")
    _edit_line(data_dir / "rct_sample" / "train.jsonl", 1, None)
    with pytest.raises(DataError, match=r"rct_sample/train\.jsonl: expected 500 rows, found 499"):
        load_task("rct", data_dir)


def test_unknown_label_names_file_line_label_and_allowed(tmp_path):
    data_dir = _copy_task(tmp_path, "citation_intent")
    _edit_line(data_dir / "citation_intent" / "train.jsonl", 3, '{"text": "x", "label": "Bogus", "metadata": {}}')
    with pytest.raises(DataError) as info:
        load_task("citation_intent", data_dir)
    message = str(info.value)
    assert "citation_intent/train.jsonl: line 3" in message
    assert "'Bogus'" in message
    assert "Background, CompareOrContrast, Extends, Future, Motivation, Uses" in message


def test_missing_file_says_which_and_that_data_ships_it(tmp_path):
    data_dir = _copy_task(tmp_path, "citation_intent")
    (data_dir / "citation_intent" / "test.jsonl").unlink()
    with pytest.raises(DataError, match=r"citation_intent/test\.jsonl: file not found.*data/ folder ships it"):
        load_task("citation_intent", data_dir)


def test_malformed_json_line_names_file_and_line(tmp_path):
    data_dir = _copy_task(tmp_path, "citation_intent")
    _edit_line(data_dir / "citation_intent" / "train.jsonl", 5, '{"text": "unterminated')
    with pytest.raises(DataError, match=r"citation_intent/train\.jsonl: line 5: malformed JSON"):
        load_task("citation_intent", data_dir)


# -------------------------------------------------------------------------------------------- corpora


@functools.cache
def _corpus(name: str) -> list[str]:
    return load_corpus(name, DATA_DIR)


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_shipped_corpus_gives_sentences(name):
    sentences = _corpus(name)
    assert len(sentences) > 1000
    assert all(len(sentence.split()) >= MIN_WORDS for sentence in sentences)
    assert all(sentence == sentence.strip() and "\n" not in sentence for sentence in sentences)


def test_max_examples_truncates_in_file_order():
    assert load_corpus("medicine", DATA_DIR, max_examples=25) == _corpus("medicine")[:25]
    assert load_corpus("medicine", DATA_DIR, max_examples=0) == []


def test_unknown_corpus_lists_known():
    with pytest.raises(ConfigError, match="unknown corpus 'law'; known corpora: biology, cs, medicine") as info:
        load_corpus("law", DATA_DIR)
    assert info.value.key == "data.corpus"


def test_missing_corpus_file_names_path(tmp_path):
    with pytest.raises(DataError, match=r"corpus_cs/cs_abstracts\.txt"):
        load_corpus("cs", tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One two. Three four? Five six! Seven.", ["One two.", "Three four?", "Five six!", "Seven."]),
        ("Values rose. 42 mice died.", ["Values rose.", "42 mice died."]),
        ("Use e.g. lowercase after dots. It stays.", ["Use e.g. lowercase after dots.", "It stays."]),
        ("Version 2.0 is out.Next no space.", ["Version 2.0 is out.Next no space."]),
        ("  Padded.   Spaces  ", ["Padded.", "Spaces"]),
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_short_sentences_are_dropped(tmp_path):
    folder = tmp_path / CORPORA["cs"].folder
    folder.mkdir()
    (folder / CORPORA["cs"].file).write_text(
        "Too short here. This sentence has exactly five. Next one is also long enough.\nTiny. A b c d e f.\n"
    )
    assert load_corpus("cs", tmp_path) == [
        "This sentence has exactly five.",
        "Next one is also long enough.",
        "A b c d e f.",
    ]
