"""NER: shipped tasks, CoNLL/BIO reading and repair, standoff -> BIO, subword alignment, seqeval, the objective."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch

from fedbt.config import ModelConfig
from fedbt.data import TASKS, get_task, load_task
from fedbt.data.ner import TaggedSentence, bio_labels, read_conll, read_standoff, standoff_to_bio, validate_bio
from fedbt.errors import ConfigError, DataError
from fedbt.metrics import compute_metrics
from fedbt.models import load_tokenizer, minilm_path, model_config_for
from fedbt.training.objectives import IGNORE_INDEX
from fedbt.training.token_classification import (
    TokenClassification,
    align_first_subword,
    decode_predictions,
    tokenize_ner,
)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
TINY = ModelConfig(source="tiny", tiny_layers=2, tiny_hidden=32, tiny_heads=2, tiny_ffn=64, max_length=32)
NER_TASKS = ("bc5cdr", "jnlpba", "ncbi_disease", "scierc_ner")

# Independent of TaskSpec: sentence counts of the shipped files (data/ner_*/SOURCE.md), entity types, and
# the BIO repairs per split (train, dev, test).
EXPECTED = {
    "bc5cdr": ({"train": 2580, "dev": 1263, "test": 1316}, ["Entity"], (4435, 2262, 2277)),
    "ncbi_disease": ({"train": 3000, "dev": 923, "test": 940}, ["Disease"], (0, 0, 0)),
    "jnlpba": (
        {"train": 6649, "dev": 883, "test": 1962},
        ["DNA", "RNA", "cell_line", "cell_type", "protein"],
        (0, 0, 0),
    ),
    "scierc_ner": (
        {"train": 1861, "dev": 275, "test": 551},
        ["Task", "Method", "Metric", "Material", "OtherScientificTerm", "Generic"],
        (0, 0, 1),
    ),
}


@functools.cache
def _shipped(name: str):
    return load_task(name, DATA_DIR)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _scierc_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped SciERC folder; returns the data_dir to load it from."""
    shutil.copytree(DATA_DIR / "ner_scierc", tmp_path / "ner_scierc", copy_function=shutil.copyfile)
    return tmp_path


def _replace_line(path: Path, line_number: int, new_line: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[line_number - 1] = new_line + "\n"
    path.write_text("".join(lines))


# ------------------------------------------------------------------------------------------ shipped tasks


def test_registry_has_the_ner_tasks():
    assert set(NER_TASKS) <= set(TASKS)
    for name in NER_TASKS:
        spec = get_task(name)
        assert spec.kind == "token_classification"
        assert spec.metrics == ("ner_f1", "ner_precision", "ner_recall")
        assert spec.labels == bio_labels(EXPECTED[name][1])
        assert spec.labels[0] == "O"


@pytest.mark.parametrize("name", NER_TASKS)
def test_shipped_ner_task_loads_with_exact_sizes_tags_and_repairs(name):
    sizes, types, repairs = EXPECTED[name]
    dataset = _shipped(name)
    labels = ["O", *(f"{prefix}-{kind}" for kind in types for prefix in "BI")]
    assert {split: len(dataset[split]) for split in dataset} == sizes == get_task(name).split_sizes
    for split, repaired in zip(("train", "dev", "test"), repairs, strict=True):
        assert dataset[split].column_names == ["tokens", "tags"]
        assert dataset[split].features["tags"].feature.names == labels
        assert f"{repaired} BIO repairs" in dataset[split].info.description
        for tokens, tags in zip(dataset[split]["tokens"], dataset[split]["tags"], strict=True):
            assert len(tokens) == len(tags) > 0
            assert all(isinstance(token, str) and token for token in tokens)
    assert {tag for tags in dataset["train"]["tags"] for tag in tags} == set(range(len(labels)))


def test_shipped_jnlpba_train_excludes_scibert_dev_documents():
    with (DATA_DIR / "ner_jnlpba" / "train_official_standoff.jsonl").open() as handle:
        assert not any(json.loads(line)["in_scibert_dev"] for line in handle)


def test_unknown_task_lists_the_ner_tasks_too():
    with pytest.raises(ConfigError) as info:
        get_task("conll2003")
    assert (
        "known tasks: ag_news, bc5cdr, chemprot, cifar10, cifar10-4, citation_intent, jnlpba, ncbi_disease, rct, "
        "scierc_ner, sciie" in str(info.value)
    )


# ------------------------------------------------------------------------------------ reading and checks


def test_read_conll_documents_blank_lines_and_columns(tmp_path):
    path = _write(
        tmp_path / "a.txt",
        "-DOCSTART- (1)\n\nAspirin\tNN\tO\tI-Entity\nhelps\tVB\tO\tO\n\n\nPain\tNN\tO\tB-Entity\n"
        "-DOCSTART- (2)\nstops\tVB\tO\tO\n",
    )
    sentences = read_conll(path)
    assert [(s.tokens, s.tags, s.lines) for s in sentences] == [
        (["Aspirin", "helps"], ["I-Entity", "O"], [3, 4]),
        (["Pain"], ["B-Entity"], [7]),
        (["stops"], ["O"], [9]),
    ]
    spaced = read_conll(_write(tmp_path / "b.txt", "Parsing B-Task\nworks O\n"), delimiter=" ", columns=2)
    assert [s.tags for s in spaced] == [["B-Task", "O"]]


def test_malformed_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.txt", "a\tNN\tO\tO\n\nb\tNN\tO\n")
    with pytest.raises(DataError, match=r"bad\.txt: line 3: expected 4 fields separated by '\\t'.*found 3"):
        read_conll(path)


def test_validate_bio_repairs_stray_inside_tags_and_counts_them():
    sentence = TaggedSentence(
        ["a", "b", "c", "d", "e", "f", "g"],
        ["I-X", "I-X", "O", "I-Y", "B-X", "I-Y", "I-Y"],
        [1, 2, 3, 4, 5, 6, 7],
    )
    following = TaggedSentence(["h"], ["I-Y"], [9])  # a sentence start is "after O"
    assert validate_bio([sentence, following], "f.txt") == 4
    assert sentence.tags == ["B-X", "I-X", "O", "B-Y", "B-X", "B-Y", "I-Y"]
    assert following.tags == ["B-Y"]
    assert validate_bio([sentence, following], "f.txt") == 0


def test_validate_bio_strict_names_file_and_line():
    sentence = TaggedSentence(["a", "b", "c"], ["B-X", "O", "I-X"], [10, 11, 12])
    with pytest.raises(DataError, match=r"f\.txt: line 12: 'I-X' follows 'O'; an entity must start with B-X"):
        validate_bio([sentence], "f.txt", strict=True)
    assert sentence.tags == ["B-X", "O", "I-X"]


@pytest.mark.parametrize("tag", ["X", "B-", "E-X", "i-X"])
def test_validate_bio_rejects_non_bio_tags(tag):
    with pytest.raises(DataError, match=rf"f\.txt: line 4: '{tag}' is not a BIO tag"):
        validate_bio([TaggedSentence(["a"], [tag], [4])], "f.txt")


def test_strict_check_on_a_shipped_file_names_its_first_stray_tag():
    path = DATA_DIR / "ner_bc5cdr" / "train.txt"
    with pytest.raises(DataError, match=r"ner_bc5cdr/train\.txt: line 3: 'I-Entity' follows 'O'"):
        validate_bio(read_conll(path), path, strict=True)


def test_unknown_tag_names_file_line_and_tag_set(tmp_path):
    data_dir = _scierc_copy(tmp_path)
    _replace_line(data_dir / "ner_scierc" / "train.txt", 3, "shown B-Bogus")
    with pytest.raises(DataError) as info:
        load_task("scierc_ner", data_dir)
    message = str(info.value)
    assert "ner_scierc/train.txt: line 3: label 'B-Bogus' is not in the task's labels of task 'scierc_ner'" in message
    assert "O, B-Task, I-Task, B-Method" in message


def test_malformed_line_in_task_file_names_file_and_line(tmp_path):
    data_dir = _scierc_copy(tmp_path)
    _replace_line(data_dir / "ner_scierc" / "dev.txt", 5, "two words O")
    with pytest.raises(DataError, match=r"ner_scierc/dev\.txt: line 5: expected 2 fields separated by ' '"):
        load_task("scierc_ner", data_dir)


def test_wrong_sentence_count_names_file(tmp_path):
    data_dir = _scierc_copy(tmp_path)
    test_file = data_dir / "ner_scierc" / "test.txt"
    test_file.write_text(test_file.read_text() + "Extra O\n")
    with pytest.raises(DataError, match=r"ner_scierc/test\.txt: split test: expected 551 sentences, found 552"):
        load_task("scierc_ner", data_dir)


def test_unknown_standoff_type_names_the_document_line(tmp_path):
    documents = [
        {"text": "IL-2 binds.", "entities": [[0, 4, "protein"]]},
        {"text": "p50 binds.", "entities": [[0, 3, "Gene"]]},
    ]
    path = _write(tmp_path / "train.jsonl", "".join(json.dumps(d) + "\n" for d in documents))
    assert [s.lines for s in read_standoff(path)] == [[1, 1, 1], [2, 2, 2]]
    spec = get_task("jnlpba")
    folder = tmp_path / spec.location
    shutil.copytree(DATA_DIR / spec.location, folder, copy_function=shutil.copyfile)
    shutil.copyfile(path, folder / spec.files["train"])
    with pytest.raises(DataError, match=r"train_official_standoff\.jsonl: line 2: label 'B-Gene' is not in the task's"):
        load_task("jnlpba", tmp_path)


# ------------------------------------------------------------------------------------ standoff -> BIO


def _entity(text: str, phrase: str, kind: str, occurrence: int = 0) -> tuple[int, int, str]:
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(phrase, start + 1)
    return (start, start + len(phrase), kind)


def test_standoff_to_bio_hand_made_document():
    text = (
        "IL-2 activates NF-kappa B p50 in human IL-2 gene assays. "
        "IL-2-dependent cells (S. Miyatake) grow.\nA title line"
    )
    entities = [
        _entity(text, "IL-2", "protein"),  # at the very start
        _entity(text, "NF-kappa B", "protein"),  # two adjacent entities of one type
        _entity(text, "p50", "protein"),
        _entity(text, "human IL-2 gene", "DNA"),  # nested: the longest is kept ...
        _entity(text, "IL-2", "protein", occurrence=1),  # ... the inner one dropped
        _entity(text, "IL-2", "protein", occurrence=2),  # ends inside the word "IL-2-dependent"
    ]
    assert standoff_to_bio(text, entities) == [
        (
            ["IL-2", "activates", "NF-kappa", "B", "p50", "in", "human", "IL-2", "gene", "assays", "."],
            ["B-protein", "O", "B-protein", "I-protein", "B-protein", "O", "B-DNA", "I-DNA", "I-DNA", "O", "O"],
        ),
        (
            ["IL-2", "-", "dependent", "cells", "(", "S", ".", "Miyatake", ")", "grow", "."],
            ["B-protein", "O", "O", "O", "O", "O", "O", "O", "O", "O", "O"],
        ),
        (["A", "title", "line"], ["O", "O", "O"]),
    ]


def test_standoff_overlap_of_equal_length_keeps_the_first():
    assert standoff_to_bio("a b c", [(2, 5, "Y"), (0, 3, "X")]) == [(["a", "b", "c"], ["B-X", "I-X", "O"])]


def test_standoff_never_splits_a_sentence_inside_an_entity():
    text = "Cells express c. Fos protein. Then stop."
    entities = [_entity(text, "c. Fos protein", "protein")]
    assert [tokens for tokens, _ in standoff_to_bio(text, entities)] == [
        ["Cells", "express", "c", ".", "Fos", "protein", "."],
        ["Then", "stop", "."],
    ]


# ---------------------------------------------------------------------------------- subword alignment


def test_align_first_subword():
    word_ids = [None, 0, 0, 1, 2, 2, 2, None]
    assert align_first_subword(word_ids, [3, 0, 5]) == [-100, 3, -100, 0, 5, -100, -100, -100]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY)


def test_minilm_tokenizer_is_fast_and_the_slow_path_agrees(tokenizer):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    assert tokenizer.is_fast
    slow = BertTokenizerLegacy(str(minilm_path() / "vocab.txt"), do_lower_case=True)
    assert not slow.is_fast
    words = [["Naloxone", "reverses", "clonidine", "."], ["IL-2", "-dependent", "NF-kappa", "B"]]
    tags = [[1, 0, 1, 0], [1, 0, 1, 2]]
    for max_length in (32, 6):
        fast_examples = tokenize_ner(words, tags, tokenizer, max_length)
        assert tokenize_ner(words, tags, slow, max_length) == fast_examples
    examples = tokenize_ner(words, tags, tokenizer, 32)
    for example, sentence_tags in zip(examples, tags, strict=True):
        assert len(example["input_ids"]) == len(example["labels"])
        assert [label for label in example["labels"] if label != IGNORE_INDEX] == sentence_tags
    truncated = tokenize_ner(words, tags, tokenizer, 6)
    assert all(len(example["input_ids"]) == 6 for example in truncated)


# -------------------------------------------------------------------------------------------- metrics


def test_seqeval_one_right_one_wrong_type():
    scores = compute_metrics(
        ["ner_f1", "ner_precision", "ner_recall"],
        [["B-Chem", "I-Chem", "O", "B-Chem"]],
        [["B-Chem", "I-Chem", "O", "B-Dis"]],
    )
    assert scores == {"ner_f1": 0.5, "ner_precision": 0.5, "ner_recall": 0.5}


def test_seqeval_precision_recall_differ_and_stray_inside_starts_an_entity():
    # gold: 3 entities; predicted: 2, both right (the stray I-Dis reads as B-Dis, conlleval style)
    predictions = [["B-Chem", "O", "O"], ["I-Dis", "I-Dis", "O"]]
    references = [["B-Chem", "O", "B-Chem"], ["B-Dis", "I-Dis", "O"]]
    scores = compute_metrics(["ner_precision", "ner_recall", "ner_f1"], predictions, references)
    assert scores == pytest.approx({"ner_precision": 1.0, "ner_recall": 2 / 3, "ner_f1": 0.8})


def test_asking_for_a_module_that_gives_other_scores_names_them():
    with pytest.raises(ValueError, match="'seqeval' gives the scores ner_precision, ner_recall, ner_f1"):
        compute_metrics(["seqeval"], [["O"]], [["O"]])


def test_decode_predictions_drops_ignored_positions():
    labels = torch.tensor([[IGNORE_INDEX, 1, IGNORE_INDEX, 0, IGNORE_INDEX], [IGNORE_INDEX, 2, 1, IGNORE_INDEX, -100]])
    argmax = torch.tensor([[0, 1, 2, 2, 0], [1, 1, 1, 0, 0]])
    predictions, references = decode_predictions(argmax, labels, ("O", "B-X", "I-X"))
    assert predictions == [["B-X", "I-X"], ["B-X", "B-X"]]
    assert references == [["B-X", "O"], ["I-X", "B-X"]]


# ------------------------------------------------------------------------------------------ objective


def test_tiny_model_forward_backward_with_the_objective(tokenizer):
    from transformers import AutoModelForTokenClassification

    spec = get_task("ncbi_disease")
    sentences = _shipped("ncbi_disease")["dev"].select(range(4))
    examples = tokenize_ner(sentences["tokens"], sentences["tags"], tokenizer, TINY.max_length)
    objective = TokenClassification(pad_id=tokenizer.pad_token_id, pad_to=TINY.max_length)
    batch = objective.collate(examples, torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape == batch["labels"].shape == (4, TINY.max_length)
    assert objective.predicted_tokens(batch) == 4 * TINY.max_length

    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_config(model_config_for(TINY, num_labels=len(spec.labels)))
    loss = objective.loss(model, batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.classifier.weight.grad is not None and model.classifier.weight.grad.abs().sum() > 0

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    predictions, references = decode_predictions(logits.argmax(-1), batch["labels"], spec.labels)
    labelled = [sum(label != IGNORE_INDEX for label in example["labels"]) for example in examples]
    assert [len(p) for p in predictions] == [len(r) for r in references] == labelled
    assert 0.0 <= compute_metrics(spec.metrics, predictions, references)["ner_f1"] <= 1.0


def test_collate_rejects_misaligned_labels():
    objective = TokenClassification(pad_id=0)
    with pytest.raises(ValueError, match="2 labels for 3 input ids"):
        objective.collate([{"input_ids": [101, 5, 102], "labels": [-100, 1]}], None)
