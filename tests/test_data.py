"""The data layer: shipped tasks and corpora with their documented sizes, data sets from local files in every
format and from the hub through one code path, label inference and checks, the token cache."""

from __future__ import annotations

import functools
import json
import shutil
from collections import Counter
from pathlib import Path

import datasets
import pytest

from fedbt.config import SourceConfig, from_dict
from fedbt.data import CORPORA, TASKS, get_task, load_corpus, load_task, split_sentences
from fedbt.data.corpus import MIN_WORDS
from fedbt.data.tasks import deal_splits, subset, subset_rows
from fedbt.errors import ConfigError, DataError

DATA_DIR = Path(__file__).resolve().parents[1] / "data"

# Independent of TaskSpec: the counts documented in data/*/SOURCE.md (and DSP Table 2).
EXPECTED = {
    "chemprot": ({"train": 4169, "dev": 2427, "test": 3469}, 13),
    "citation_intent": ({"train": 1688, "dev": 114, "test": 139}, 6),
    "sciie": ({"train": 3219, "dev": 455, "test": 974}, 7),
    "rct": ({"train": 300, "dev": 100, "test": 100}, 5),
    "sst2": ({"train": 20000, "dev": 436, "test": 436}, 2),
    "ag_news": ({"train": 4000, "dev": 1000, "test": 7600}, 4),
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


def _source(**fields) -> SourceConfig:
    return from_dict(SourceConfig, fields, "sources.x")


# ------------------------------------------------------------------------------------ shipped tasks


def test_registry_matches_expected_tasks():
    classification = {name: spec for name, spec in TASKS.items() if spec.kind == "classification"}
    assert set(classification) == set(EXPECTED)
    for name, spec in classification.items():
        assert spec.name == name
        assert set(spec.metrics) == {"accuracy", "macro_f1"}
        assert len(set(spec.labels)) == len(spec.labels)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_task_loads_with_exact_sizes_and_labels(name):
    sizes, n_labels = EXPECTED[name]
    dataset = _shipped(name)
    spec = get_task(name)
    assert {split: len(dataset[split]) for split in dataset} == sizes == dict(spec.split_sizes)
    assert len(spec.labels) == n_labels
    for split in ("train", "dev", "test"):
        assert dataset[split].column_names == ["text", "label"]
        assert dataset[split].features["label"].names == list(spec.labels)
        labels = dataset[split]["label"]
        assert all(isinstance(label, int) and 0 <= label < n_labels for label in labels)
        assert all(isinstance(text, str) and text for text in dataset[split]["text"])
    assert len(set(dataset["train"]["label"])) == n_labels


@pytest.mark.parametrize(
    ("name", "dealt", "rows"),
    [("rct", ("train", "dev", "test"), 500), ("sst2", ("dev", "test"), 872), ("ag_news", ("train", "dev"), 5000)],
)
def test_dealt_splits_are_stratified_disjoint_and_deterministic(name, dealt, rows):
    dataset = _shipped(name)
    texts = {split: list(dataset[split]["text"]) for split in dealt}
    assert sum(len(t) for t in texts.values()) == rows
    assert len({(split, i) for split in dealt for i in range(len(texts[split]))}) == rows
    counts = {split: Counter(dataset[split]["label"]) for split in dealt}
    totals = sum(counts.values(), Counter())
    shares = {split: len(texts[split]) / rows for split in dealt}
    for split in dealt:
        assert all(abs(counts[split][label] - total * shares[split]) <= 1 for label, total in totals.items())
    assert list(load_task(name, DATA_DIR)[dealt[-1]]["text"]) == texts[dealt[-1]]


def test_sst2_and_ag_news_keep_their_upstream_rows():
    sst2, ag_news = _shipped("sst2"), _shipped("ag_news")
    assert sst2["train"][0] == {"text": "hide new secretions from the parental units ", "label": 0}
    assert Counter(sst2["dev"]["label"]) + Counter(sst2["test"]["label"]) == Counter({1: 444, 0: 428})
    assert Counter(ag_news["test"]["label"]) == Counter({0: 1900, 1: 1900, 2: 1900, 3: 1900})
    assert Counter(ag_news["train"]["label"]) == Counter({0: 1000, 1: 1000, 2: 1000, 3: 1000})


def test_deal_splits_cycles_within_each_label_and_keeps_file_order():
    texts = [f"row {i}" for i in range(10)]
    labels = [0] * 5 + [1] * 5
    dealt = deal_splits(texts, labels, (("train", 3), ("dev", 1), ("test", 1)))
    assert {split: len(idx) for split, idx in dealt.items()} == {"train": 6, "dev": 2, "test": 2}
    assert sorted(sum(dealt.values(), [])) == list(range(10))
    for split in ("dev", "test"):
        assert sorted(labels[i] for i in dealt[split]) == [0, 1]
        assert dealt[split] == sorted(dealt[split])


def test_subset_rule_is_the_datasets_shuffle():
    split = _shipped("chemprot")["dev"]
    assert subset(split, 50)["text"] == split.shuffle(seed=0).select(range(50))["text"]
    assert subset_rows(10, None) == list(range(10)) and subset_rows(10, 20) == list(range(10))


def test_get_task_unknown_lists_known_tasks():
    with pytest.raises(ConfigError, match="unknown task 'nope'; known tasks: ag_news, bc5cdr, chemprot, cifar10"):
        get_task("nope")
    with pytest.raises(ConfigError) as info:
        load_task("nope", DATA_DIR, key="evaluation.task")
    assert info.value.key == "evaluation.task"


def test_wrong_row_count_names_file(tmp_path):
    data_dir = _copy_task(tmp_path, "citation_intent")
    _edit_line(data_dir / "citation_intent" / "dev.jsonl", 7, None)
    with pytest.raises(DataError, match=r"citation_intent/dev\.jsonl: split dev: expected 114 rows, found 113"):
        load_task("citation_intent", data_dir)


def test_wrong_row_count_of_single_file_task(tmp_path):
    data_dir = _copy_task(tmp_path, "rct_sample")
    _edit_line(data_dir / "rct_sample" / "train.jsonl", 1, None)
    with pytest.raises(DataError, match=r"rct_sample/train\.jsonl: split (train|dev|test): expected 1?00 rows"):
        load_task("rct", data_dir)


def test_unknown_label_names_file_row_label_and_allowed(tmp_path):
    data_dir = _copy_task(tmp_path, "citation_intent")
    _edit_line(data_dir / "citation_intent" / "train.jsonl", 3, '{"text": "x", "label": "Bogus", "metadata": {}}')
    with pytest.raises(DataError) as info:
        load_task("citation_intent", data_dir)
    message = str(info.value)
    assert "citation_intent/train.jsonl: row 3" in message
    assert "'Bogus'" in message
    assert "Background, CompareOrContrast, Extends, Future, Motivation, Uses" in message


def test_missing_file_says_which_and_that_data_ships_it(tmp_path):
    data_dir = _copy_task(tmp_path, "citation_intent")
    (data_dir / "citation_intent" / "test.jsonl").unlink()
    with pytest.raises(DataError, match=r"citation_intent/test\.jsonl: file not found.*data/ folder ships it"):
        load_task("citation_intent", data_dir)


def test_malformed_json_names_file_and_the_readers_reason(tmp_path):
    data_dir = _copy_task(tmp_path, "citation_intent")
    _edit_line(data_dir / "citation_intent" / "train.jsonl", 5, '{"text": "unterminated')
    with pytest.raises(DataError, match=r"citation_intent/train\.jsonl: cannot be read as json .*row"):
        load_task("citation_intent", data_dir)


# --------------------------------------------------------------------------------- local task files

ROWS = {
    "train": [("good film", "pos"), ("bad film", "neg"), ("fine film", "pos"), ("dull film", "neg")],
    "validation": [("great", "pos"), ("awful", "neg")],
    "test": [("nice", "pos"), ("poor", "neg")],
}


def _write_split(path: Path, rows, text="text", label="label") -> None:
    frame = datasets.Dataset.from_dict({text: [t for t, _ in rows], label: [lab for _, lab in rows]})
    if path.suffix == ".jsonl":
        frame.to_json(path)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv", ".parquet"])
def test_local_task_directory_in_every_format(tmp_path, suffix):
    for split, rows in ROWS.items():
        _write_split(tmp_path / f"{split}{suffix}", rows)
    task = load_task(str(tmp_path), "data")  # a path: the default declaration (classification, text / label)
    assert {split: len(task[split]) for split in task} == {"train": 4, "dev": 2, "test": 2}
    assert task["train"].features["label"].names == ["neg", "pos"]  # inferred from train, sorted
    assert task["dev"]["label"] == [1, 0] and task["test"]["text"] == ["nice", "poor"]


def test_declared_task_maps_columns_splits_and_deals_one_file(tmp_path):
    rows = [(f"sentence {i}", ["a", "b", "c"][i % 3]) for i in range(30)]
    _write_split(tmp_path / "all.csv", rows, text="sentence", label="y")
    source = _source(
        location=str(tmp_path / "all.csv"),
        columns={"text": "sentence", "label": "y"},
        deal={"source": "train", "into": {"train": 3, "dev": 1, "test": 1}},
        sizes={"train": 18, "dev": 6, "test": 6},
    )
    task = load_task("mine", "data", sources={"mine": source})
    assert {split: len(task[split]) for split in task} == {"train": 18, "dev": 6, "test": 6}
    assert all(
        Counter(task[split]["label"]) == Counter({0: n, 1: n, 2: n})
        for split, n in (("train", 6), ("dev", 2), ("test", 2))
    )


def test_label_missing_from_train_names_the_file_and_row(tmp_path):
    for split, rows in ROWS.items():
        _write_split(tmp_path / f"{split}.jsonl", rows if split != "test" else [*rows, ("huh", "neutral")])
    with pytest.raises(DataError) as info:
        load_task(str(tmp_path), "data")
    message = str(info.value)
    assert f"{tmp_path / 'test.jsonl'}: row 3: label 'neutral' is not in the labels of train" in message
    assert "neg, pos" in message


def test_missing_column_is_named_with_how_to_declare_it(tmp_path):
    for split, rows in ROWS.items():
        _write_split(tmp_path / f"{split}.jsonl", rows, text="sentence")
    with pytest.raises(DataError, match="missing column\\(s\\) text; found sentence, label.*columns"):
        load_task(str(tmp_path), "data")


def test_token_classification_from_jsonl_and_conll(tmp_path):
    sentences = {
        "train": [(["IL-2", "binds"], ["B-protein", "O"]), (["T", "cells"], ["B-cell", "I-cell"])],
        "dev": [(["p50"], ["B-protein"])],
        "test": [(["B", "cells"], ["B-cell", "I-cell"])],
    }
    jsonl, conll = tmp_path / "jsonl", tmp_path / "conll"
    jsonl.mkdir(), conll.mkdir()
    for split, rows in sentences.items():
        datasets.Dataset.from_dict({"words": [t for t, _ in rows], "ner": [g for _, g in rows]}).to_json(
            jsonl / f"{split}.jsonl"
        )
        (conll / f"{split}.txt").write_text(
            "\n\n".join("\n".join(f"{w}\t{g}" for w, g in zip(*r, strict=True)) for r in rows) + "\n"
        )
    declared = _source(location=str(jsonl), kind="token_classification", columns={"tokens": "words", "tags": "ner"})
    from_jsonl = load_task("j", "data", sources={"j": declared})
    from_conll = load_task("c", "data", sources={"c": _source(location=str(conll), kind="token_classification")})
    for task in (from_jsonl, from_conll):
        assert task["train"].features["tags"].feature.names == ["O", "B-cell", "I-cell", "B-protein", "I-protein"]
        assert task["dev"]["tags"] == [[3]] and task["train"]["tokens"][0] == ["IL-2", "binds"]
    (conll / "dev.txt").write_text("p50\tB-gene\n")
    with pytest.raises(DataError, match=r"conll/dev\.txt: line 1: label 'B-gene' is not in the labels of train"):
        load_task("c", "data", sources={"c": _source(location=str(conll), kind="token_classification")})


def test_hub_task_goes_through_the_same_path(tmp_path, monkeypatch):
    """A hub id is loaded by ``datasets.load_dataset(id, config, revision=...)``; here it returns local files, with
    a ClassLabel column and a ``validation`` split as the hub's datasets have them."""
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    fake = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"text": [t for t, _ in rows], "label": [int(lab == "pos") for _, lab in rows]}, features=features
            )
            for split, rows in ROWS.items()
        }
    )
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or fake)
    task = load_task("hf:someone/reviews:small", "data", sources={})
    assert calls == [(("someone/reviews", "small"), {"revision": None})]
    assert task["dev"]["label"] == [1, 0] and task["train"].features["label"].names == ["neg", "pos"]


def test_hub_id_offline_names_the_key_and_how_to_make_it_available(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as info:
        load_task("hf:nobody/not-cached-anywhere", "data", key="evaluation.task")
    assert info.value.key == "evaluation.task"
    assert "HF_HUB_OFFLINE=0" in str(info.value) and "local directory" in str(info.value)


# -------------------------------------------------------------------------------------------- corpora


@functools.cache
def _corpus(name: str) -> list[str]:
    return load_corpus(name, DATA_DIR)


@pytest.mark.parametrize("name", sorted(n for n, spec in CORPORA.items() if spec.kind == "text"))
def test_shipped_corpus_gives_sentences(name):
    sentences = _corpus(name)
    assert len(sentences) > 1000
    assert all(len(sentence.split()) >= MIN_WORDS for sentence in sentences)
    assert all(sentence == sentence.strip() and "\n" not in sentence for sentence in sentences)


def test_max_examples_truncates_in_file_order():
    assert load_corpus("medicine", DATA_DIR, max_examples=25) == _corpus("medicine")[:25]
    assert load_corpus("medicine", DATA_DIR, max_examples=0) == []


def test_unknown_corpus_lists_known():
    with pytest.raises(ConfigError, match="unknown corpus 'law'; known corpora: biology, cifar10") as info:
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
        (
            "As shown in Fig. 2 the loss falls. Smith et al. agree.",
            ["As shown in Fig. 2 the loss falls.", "Smith et al. agree."],
        ),
        (
            "The 5' end and the 3' UTR were cut. It was mapped.",
            ["The 5' end and the 3' UTR were cut.", "It was mapped."],
        ),
        ("  Padded.   Spaces  ", ["Padded.", "Spaces"]),
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


DOCS = ["Too short here. This sentence has exactly five. Next one is also long enough.", "Tiny. A b c d e f."]
KEPT = ["This sentence has exactly five.", "Next one is also long enough.", "A b c d e f."]


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".parquet"])
def test_local_corpus_in_every_format(tmp_path, suffix):
    path = tmp_path / f"docs{suffix}"
    if suffix == ".txt":
        path.write_text("\n".join(DOCS) + "\n")
    else:
        frame = datasets.Dataset.from_dict({"text": DOCS})
        {".jsonl": frame.to_json, ".csv": frame.to_csv, ".parquet": frame.to_parquet}[suffix](str(path))
    assert load_corpus(str(path), "data") == KEPT
    assert load_corpus(str(tmp_path), "data") == KEPT  # a directory of them


def test_declared_corpus_of_sentences_is_not_split_again(tmp_path):
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCS))
    source = _source(
        location=str(tmp_path / "s.jsonl"), kind="corpus", columns={"text": "body"}, segment=False, min_words=1
    )
    assert load_corpus("mine", "data", sources={"mine": source}) == DOCS


# ---------------------------------------------------------------------------------------- token cache


def test_token_cache_is_built_once_reused_and_invalidated(tmp_path, monkeypatch):
    from fedbt.config import DataConfig, ModelConfig
    from fedbt.data import run_data
    from fedbt.data.corpus import get_corpus
    from fedbt.models import load_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(DOCS) + "\n")
    data = DataConfig(data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    tokenizer = load_tokenizer(ModelConfig(source="tiny"))
    built = []
    original = run_data.iter_grouped
    monkeypatch.setattr(run_data, "iter_grouped", lambda *a, **k: built.append(1) or original(*a, **k))
    spec = get_corpus(str(corpus))
    first = run_data.corpus_tokens(spec, tokenizer, 16, data)
    again = run_data.corpus_tokens(spec, tokenizer, 16, data)
    assert built == [1], "the second job reads the cache"
    assert (
        len(first) == 3
        and list(first[0]["input_ids"]) == tokenizer(KEPT[0], truncation=True, max_length=16)["input_ids"]
    )
    assert again.split.ids.filename == first.split.ids.filename
    run_data.corpus_tokens(spec, tokenizer, 8, data)  # another max_length
    corpus.write_text("\n".join(DOCS[::-1]) + "\n")  # a changed source
    changed = run_data.corpus_tokens(spec, tokenizer, 16, data)
    assert built == [1, 1, 1] and list(changed[0]["input_ids"]) != list(first[0]["input_ids"])
    assert len(list((tmp_path / "cache" / "tokens").iterdir())) == 3


def test_heldout_dev_and_test_slices_are_disjoint_from_each_other_and_from_training(tiny_config):
    """Pre-training's dev slice (data.dev_examples, what grids choose on) sits between the training sentences and
    the reported test slice (data.heldout_examples); the three never share a sentence."""
    from fedbt.data.run_data import corpus_slices, load_run_data
    from fedbt.run import prepare

    assert corpus_slices(100, 60, 8, 16) == (range(60), range(60, 68), range(68, 84))
    assert corpus_slices(70, None, 8, 16) == (range(46), range(46, 54), range(54, 70)), "all: the last 24 held out"
    assert corpus_slices(20, 60, 8, 16) == (range(0), range(0, 4), range(4, 20)), "short: training shrinks first"
    prepared = prepare(tiny_config("data.dev_examples=8"))
    data = load_run_data(prepared.config, prepared.model_config, prepared.objective)
    train = {int(row) for client in data.clients for row in client.rows}
    dev, test = (set(data.eval_sets[name].rows.tolist()) for name in ("dev_heldout", "heldout"))
    assert (len(dev), len(test), data.pool_size) == (8, 16, 96)
    assert not (dev & test) and not (train & dev) and not (train & test)
    assert max(train) < min(dev) and max(dev) < min(test)


def test_heldout_losses_score_the_test_slice_and_the_dev_slice_each_on_its_own(tiny_config):
    """Every round of pre-training records heldout_mlm_loss on the test slice (the tables' metric) and
    dev_heldout_mlm_loss on the dev slice (what grids choose on); without a dev slice, only the first."""
    from fedbt.run import build_federation, prepare, round_evaluator
    from fedbt.training import loop

    prepared = prepare(tiny_config("data.dev_examples=8"))
    federation = build_federation(prepared)
    scores = round_evaluator(prepared, federation)(federation.global_model)
    objective = prepared.objective.build(
        federation.data.processor, prepared.objective_settings(padding="dynamic", masked_only=True)
    )
    for name in ("heldout", "dev_heldout"):
        examples = federation.data.eval_sets[name]
        device, seed = federation.setup.device, prepared.config.seed
        assert scores[f"{name}_mlm_loss"] == loop.eval_loss(
            federation.global_model, objective, examples, 32, device, seed
        )
    assert scores["heldout_mlm_loss"] != scores["dev_heldout_mlm_loss"]
    plain = prepare(tiny_config())
    assert set(round_evaluator(plain, build_federation(plain))(federation.global_model)) == {"heldout_mlm_loss"}
