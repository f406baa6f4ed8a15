"""Client partitions: exact cover, determinism, the paper's skewed shape, label skew, min_size, caching."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fedbt.data import partition as partition_module
from fedbt.data.partition import SCHEMES, load_or_create_partition, partition_digest, partition_indices
from fedbt.errors import ConfigError, DataError

N, CLIENTS = 997, 7
LABELS = np.random.default_rng(123).integers(0, 5, size=N).tolist()


def _split(scheme: str, seed: int = 0, **kwargs) -> list[list[int]]:
    return partition_indices(N, CLIENTS, scheme, seed, labels=LABELS, **kwargs)


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "papers"])
def test_every_index_exactly_once(scheme):
    clients = _split(scheme)
    assert len(clients) == CLIENTS
    assert sum(len(c) for c in clients) == N
    assert sorted(i for c in clients for i in c) == list(range(N))
    assert all(c == sorted(c) for c in clients)


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "papers"])
def test_deterministic_per_seed(scheme):
    assert _split(scheme, seed=3) == _split(scheme, seed=3)
    if scheme == "uniform":
        assert _split(scheme, seed=4) == _split(scheme, seed=3)
    else:
        assert _split(scheme, seed=4) != _split(scheme, seed=3)


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "papers"])
def test_min_size_honoured(scheme):
    labels = LABELS[:60]
    clients = partition_indices(60, 6, scheme, 0, labels=labels, alpha=0.05, min_size=8)
    assert min(len(c) for c in clients) >= 8
    assert sorted(i for c in clients for i in c) == list(range(60))


def test_uniform_is_contiguous_blocks_in_file_order():
    clients = partition_indices(10, 3, "uniform", 0)
    assert clients == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_iid_is_near_equal():
    sizes = [len(c) for c in _split("iid")]
    assert max(sizes) - min(sizes) <= 1


def test_skewed_has_bell_shape():
    sizes = [len(c) for c in partition_indices(6000, 6, "skewed", 0)]
    assert min(sizes[2], sizes[3]) > max(sizes[1], sizes[4])
    assert min(sizes[1], sizes[4]) > max(sizes[0], sizes[5])
    # floor(x / (10/6)) with x ~ N(5, 2): about 4.8 % on each edge client, 29.8 % on each middle one.
    assert 0.03 < sizes[0] / 6000 < 0.07
    assert 0.26 < sizes[2] / 6000 < 0.34


def _mean_label_distance(clients: list[list[int]], labels: list[int]) -> float:
    """Mean total-variation distance between each client's label distribution and the global one."""
    labels_array = np.asarray(labels)
    overall = np.bincount(labels_array, minlength=5) / len(labels)
    distances = [0.5 * np.abs(np.bincount(labels_array[c], minlength=5) / len(c) - overall).sum() for c in clients]
    return float(np.mean(distances))


def test_dirichlet_small_alpha_is_label_skewed():
    iid = _mean_label_distance(_split("iid"), LABELS)
    skewed = _mean_label_distance(_split("dirichlet", alpha=0.1), LABELS)
    assert skewed > 0.3 > 0.1 > iid


def test_quantity_skew_varies_sizes():
    iid_sizes = [len(c) for c in _split("iid")]
    quantity_sizes = [len(c) for c in _split("quantity", alpha=0.5)]
    assert np.std(quantity_sizes) > 10 * np.std(iid_sizes) + 10


def test_errors_name_their_keys():
    with pytest.raises(ConfigError, match="dirichlet needs a labelled dataset") as info:
        partition_indices(100, 4, "dirichlet", 0)
    assert info.value.key == "federation.partition.scheme"
    with pytest.raises(ConfigError, match="unknown scheme 'random'") as info:
        partition_indices(100, 4, "random", 0)
    assert info.value.key == "federation.partition.scheme"
    with pytest.raises(ConfigError, match=r"at least 10 examples from only 30") as info:
        partition_indices(30, 4, "iid", 0, min_size=10)
    assert info.value.key == "federation.partition.min_size"
    assert "federation.partition.min_size" in str(info.value)
    with pytest.raises(DataError, match="3 labels for n = 100"):
        partition_indices(100, 4, "dirichlet", 0, labels=[0, 1, 2])


# -------------------------------------------------------------------------------------------- caching


def _create(out_dir, labels=LABELS, scheme="dirichlet"):
    return load_or_create_partition("toy", N, CLIENTS, scheme, 1, out_dir, labels=labels, alpha=0.3, min_size=2)


def test_save_load_round_trip(tmp_path):
    created = _create(tmp_path)
    assert created.path == tmp_path / "toy__n997__dirichlet__c7__s1__a0.3__m2.json"
    assert created.clients == partition_indices(N, CLIENTS, "dirichlet", 1, labels=LABELS, alpha=0.3, min_size=2)
    stored = json.loads(created.path.read_text())
    assert stored["meta"]["scheme"] == "dirichlet" and stored["meta"]["n"] == N
    assert stored["sha256"] == created.digest == partition_digest(stored["meta"], stored["clients"])
    loaded = _create(tmp_path)
    assert loaded == created
    assert loaded.sizes() == [len(c) for c in created.clients]
    assert [p.name for p in tmp_path.iterdir()] == [created.path.name]


def test_second_call_loads_instead_of_recomputing(tmp_path, monkeypatch):
    created = _create(tmp_path)
    mtime = os.stat(created.path).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("partition recomputed")

    monkeypatch.setattr(partition_module, "partition_indices", fail)
    assert _create(tmp_path) == created
    assert os.stat(created.path).st_mtime_ns == mtime


def test_tampered_file_raises(tmp_path):
    path = _create(tmp_path).path
    stored = json.loads(path.read_text())
    stored["clients"][0].append(stored["clients"][1].pop())
    path.write_text(json.dumps(stored))
    with pytest.raises(DataError, match="sha256 does not match"):
        _create(tmp_path)


def test_corrupt_file_raises(tmp_path):
    path = _create(tmp_path).path
    path.write_text(path.read_text()[:100])
    with pytest.raises(DataError, match="not a valid partition file"):
        _create(tmp_path)


def test_meta_mismatch_raises(tmp_path):
    _create(tmp_path)
    other_labels = [(label + 1) % 5 for label in LABELS]
    with pytest.raises(DataError, match="disagrees with the request on labels_sha256"):
        _create(tmp_path, labels=other_labels)


def test_bad_dataset_id(tmp_path):
    with pytest.raises(DataError, match="dataset_id"):
        load_or_create_partition("a/b", 10, 2, "iid", 0, tmp_path)
