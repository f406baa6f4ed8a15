"""The numbers the FedBT paper reports, for the "paper" columns of the regenerated tables.

Source: Wang et al., "FedBT", Journal of Software 2025, 36(9), Tables 1, 3, 4 and 7 (all runs on
bert-base-uncased with 6 clients), transcribed in ``docs/paper-results.md`` of the project's shared notes.
Compute = percent of full-model FedAvg (BERT-FL) seconds of local training; comm = percent of BERT-FL upload
per round; scores are test scores (F1 for NER, accuracy for classification), keyed by our task names.
Rows the paper does not have (or whose cells were cut off) are absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SOURCE = "Wang et al., FedBT, Journal of Software 36(9), 2025 (bert-base-uncased, 6 clients)"


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table: compute and communication percent of BERT-FL, and task scores."""

    compute_pct: float | None
    comm_pct: float | None
    scores: dict[str, float] = field(default_factory=dict)


TABLES: dict[str, dict[str, PaperRow]] = {
    "table1": {  # further pre-training, then centralised fine-tuning
        "BERT": PaperRow(None, None, {"jnlpba": 0.7181, "scierc_ner": 0.6223, "rct": 0.8248}),
        "BERT-C": PaperRow(None, None, {"jnlpba": 0.7244, "scierc_ner": 0.6499, "rct": 0.8121}),
        "BERT-FL": PaperRow(100.0, 100.0, {"jnlpba": 0.7224, "scierc_ner": 0.6330, "rct": 0.8185}),
        "DistilBERT": PaperRow(55.37, 64.14, {"jnlpba": 0.7111, "scierc_ner": 0.6278, "rct": 0.8280}),
        "TinyBERT-6": PaperRow(49.23, 61.17, {"jnlpba": 0.7085, "scierc_ner": 0.6089, "rct": 0.8073}),
        "TinyBERT-4": PaperRow(18.20, 13.13, {"jnlpba": 0.6732, "scierc_ner": 0.5664, "rct": 0.7994}),
        "FedBT": PaperRow(34.31, 7.04, {"jnlpba": 0.7198, "scierc_ner": 0.6421, "rct": 0.8312}),
    },
    "table3": {  # federated fine-tuning
        "BERT-C": PaperRow(
            None, None, {"bc5cdr": 0.8255, "ncbi_disease": 0.7266, "chemprot": 0.8123, "citation_intent": 0.7338}
        ),
        "BERT-FL": PaperRow(
            100.0, 100.0, {"bc5cdr": 0.8039, "ncbi_disease": 0.7351, "chemprot": 0.8181, "citation_intent": 0.7554}
        ),
        "DistilBERT": PaperRow(
            51.92, 60.95, {"bc5cdr": 0.7789, "ncbi_disease": 0.7111, "chemprot": 0.7919, "citation_intent": 0.7266}
        ),
        "TinyBERT-6": PaperRow(
            52.39, 60.94, {"bc5cdr": 0.7792, "ncbi_disease": 0.6974, "chemprot": 0.7832, "citation_intent": 0.7410}
        ),
        "TinyBERT-4": PaperRow(
            18.01, 13.09, {"bc5cdr": 0.7522, "ncbi_disease": 0.6781, "chemprot": 0.6835, "citation_intent": 0.6187}
        ),
        "FedBT": PaperRow(
            48.26, 20.19, {"bc5cdr": 0.8067, "ncbi_disease": 0.7214, "chemprot": 0.7942, "citation_intent": 0.7410}
        ),
    },
    "table4": {  # pre-training ablation, CS corpus, SciERC F1
        "FedBT-All": PaperRow(49.50, 61.17, {"scierc_ner": 0.6393}),
        "FedBT\\PL": PaperRow(35.23, 7.04, {"scierc_ner": 0.6407}),
        "FedBT\\M": PaperRow(34.31, 7.04, {"scierc_ner": 0.6239}),
        "FedBT\\S": PaperRow(34.31, 7.04, {"scierc_ner": 0.6038}),
        "FedBT\\SP": PaperRow(31.59, 7.04, {"scierc_ner": 0.6418}),
        "FedBT": PaperRow(34.31, 7.04, {"scierc_ner": 0.6421}),
    },
    "table7": {  # client model depth in federated fine-tuning, ChemProt accuracy
        "FedBT-6-Map": PaperRow(27.20, 20.19, {"chemprot": 0.5762}),
        "FedBT-6\\Add": PaperRow(26.98, 6.51, {"chemprot": 0.5154}),
        "FedBT-6": PaperRow(27.20, 20.19, {"chemprot": 0.6019}),
        "FedBT-8-Map": PaperRow(37.33, 20.19, {"chemprot": 0.6950}),
        "FedBT-8\\Add": PaperRow(32.15, 6.51, {"chemprot": 0.5935}),
        "FedBT-8": PaperRow(37.33, 20.19, {"chemprot": 0.6786}),
        "FedBT-10-Map": PaperRow(42.62, None),
    },
}


def paper_row(table: str | None, label: str | None) -> PaperRow | None:
    """The paper's row ``label`` of ``table`` (None when either is unset or the paper lacks it)."""
    if table is None or label is None:
        return None
    return TABLES.get(table, {}).get(label)
