"""The per-client-per-round cost ledger and payload counting."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedbt.ledger import FIELDS, Ledger, LedgerRow, format_layers, payload_nbytes


def _row(round_idx: int, client: int, **changes) -> LedgerRow:
    values = {
        "round": round_idx,
        "client": client,
        "examples": 10 + client,
        "steps": 2,
        "tokens": 320,
        "trained_layers": "0-11" if client else "0;3",
        "upload_params": 100,
        "upload_bytes": 400,
        "download_params": 1000,
        "download_bytes": 4000,
        "measured_flops": 5_000_000_000_000,
        "analytic_flops": 6_000_000_000_000,
        "seconds": 1.25,
        "peak_memory_bytes": 2**30 + client,
        "train_loss": 2.5 + client,
    }
    return LedgerRow(**(values | changes))


def _rounds(n: int, clients: int = 2) -> list[list[LedgerRow]]:
    return [[_row(r, c) for c in range(clients)] for r in range(n)]


def test_round_trip_and_header(tmp_path):
    ledger = Ledger(tmp_path / "run" / "ledger.csv")
    assert ledger.rows() == []
    written = _rounds(3)
    for rows in written:
        ledger.append(rows)
    assert ledger.path.read_text().splitlines()[0] == ",".join(FIELDS)
    assert [f.name for f in dataclasses.fields(LedgerRow)] == FIELDS
    assert ledger.rows() == [row for rows in written for row in rows]
    assert isinstance(ledger.rows()[0].seconds, float) and ledger.rows()[0].trained_layers == "0;3"


def test_truncate_after(tmp_path):
    ledger = Ledger(tmp_path / "ledger.csv")
    for rows in _rounds(3):
        ledger.append(rows)
    ledger.truncate_after(0)
    assert [(r.round, r.client) for r in ledger.rows()] == [(0, 0), (0, 1)]
    ledger.append([_row(1, 0)])  # a resumed run appends again
    assert [r.round for r in ledger.rows()] == [0, 0, 1]
    ledger.truncate_after(-1)
    assert ledger.rows() == []
    assert ledger.path.read_text().strip() == ",".join(FIELDS)
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.csv"], "no temporary file is left behind"
    Ledger(tmp_path / "new" / "ledger.csv").truncate_after(-1)  # a fresh run before any row


def test_summary(tmp_path):
    ledger = Ledger(tmp_path / "ledger.csv")
    for rows in _rounds(2):
        ledger.append(rows)
    summary = ledger.summary()
    assert summary["rounds"] == 2 and summary["client_rounds"] == 4
    assert summary["total_upload_bytes"] == 4 * 400
    assert summary["total_download_bytes"] == 4 * 4000
    assert summary["total_measured_flops"] == 4 * 5_000_000_000_000
    assert summary["total_analytic_flops"] == 4 * 6_000_000_000_000
    assert summary["total_client_seconds"] == pytest.approx(5.0)
    assert summary["max_peak_memory_bytes"] == 2**30 + 1
    assert summary["upload_bytes_per_round"] == 800
    assert summary["upload_bytes_per_client_round"] == 400
    assert summary["upload_mib_per_round"] == pytest.approx(800 / 2**20)
    assert summary["download_mb_per_client_round"] == pytest.approx(4000 / 1e6)
    assert summary["client_seconds_per_round"] == pytest.approx(2.5)
    # example-weighted: clients hold 10 and 11 examples, losses 2.5 and 3.5
    assert summary["last_round_train_loss"] == pytest.approx((10 * 2.5 + 11 * 3.5) / 21)


def test_summary_of_empty_ledger(tmp_path):
    summary = Ledger(tmp_path / "ledger.csv").summary()
    assert summary["rounds"] == 0 and summary["total_upload_bytes"] == 0
    assert summary["upload_mib_per_round"] == 0
    assert "last_round_train_loss" not in summary, "no loss when nobody trained"


def test_payload_nbytes_counts_tied_tensors_once():
    embedding = torch.zeros(10, 4)
    payload = {"embeddings.word.weight": embedding, "decoder.weight": embedding, "bias": torch.zeros(10)}
    assert payload_nbytes(payload) == (50, 200)
    shared_storage = {"a": embedding, "b": embedding.view(40)[:40].view(10, 4)}  # same storage, same view
    assert payload_nbytes(shared_storage) == (40, 160)
    halves = {"top": embedding[:5], "bottom": embedding[5:]}  # one storage, different parts: both sent
    assert payload_nbytes(halves) == (40, 160)


def test_payload_nbytes_uses_the_dtype_sent():
    payload = {"w": torch.zeros(3, 4, dtype=torch.float16), "b": torch.zeros(4, dtype=torch.bfloat16)}
    assert payload_nbytes(payload) == (16, 32)
    assert payload_nbytes({"w": torch.zeros(3, dtype=torch.float64)}) == (3, 24)
    assert payload_nbytes({}) == (0, 0)


def test_format_layers():
    assert format_layers(range(12)) == "0-11"
    assert format_layers([3, 0]) == "0;3"
    assert format_layers([0, 1, 2, 5, 7, 8, 8]) == "0-2;5;7-8"
    assert format_layers([]) == ""
