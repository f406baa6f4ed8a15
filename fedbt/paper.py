"""The FedBT paper's setup and reported numbers, in one place: what the cost tables (``fedbt costs
--compare-paper``) and the report's "paper" columns compare with.

Source: Wang et al., "FedBT", Journal of Software 2025, 36(9), Tables 1, 3, 4 and 7 (all runs on
bert-base-uncased with 6 clients), transcribed in ``docs/paper-results.md`` of the project's shared notes.
Compute = percent of full-model FedAvg (BERT-FL) seconds of local training on the authors' GPUs; comm = percent
of BERT-FL upload per round; scores are test scores (F1 for NER, accuracy for classification), keyed by our
task names. Rows the paper does not have (or whose cells were cut off) are absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SOURCE = "Wang et al., FedBT, Journal of Software 36(9), 2025 (bert-base-uncased, 6 clients)"

BASE_ARCH = "bert-base-uncased"
"""The paper's global model."""
ROUNDS = {"pretrain": 5, "finetune": 10}
"""Federated rounds ``I`` of each scenario."""
HEAD = {"pretrain": "mlm", "finetune": "token_classification"}
"""The output head of each scenario's cost figures. The fine-tuning communication sizes match a
token-classification model (no pooler): the paper's NER tasks."""
CLIENTS = 6
TINYBERT_6 = "huawei-noah/TinyBERT_General_6L_768D"
TINYBERT_4 = "huawei-noah/TinyBERT_General_4L_312D"


@dataclass(frozen=True)
class CommRow:
    """One reported communication figure: upload per round, percent of BERT-FL and the paper's size.

    ``method`` runs on ``arch`` (None: an architecture this suite cannot build, e.g. DistilBERT). Sizes
    are MiB in the pre-training tables and decimal MB in the fine-tuning tables.
    """

    method: str
    percent: float
    size: float
    arch: str | None = BASE_ARCH


COMM: dict[tuple[str, str], CommRow] = {
    ("pretrain", "fedavg"): CommRow("fedavg", 100.0, 417.83),
    ("pretrain", "distilbert"): CommRow("fedavg", 64.14, 267.98, arch=None),
    ("pretrain", "tinybert-6"): CommRow("fedavg", 61.17, 255.57, arch=TINYBERT_6),
    ("pretrain", "tinybert-4"): CommRow("fedavg", 13.13, 54.88, arch=TINYBERT_4),
    ("pretrain", "fedbt"): CommRow("fedbt", 7.04, 29.42),
    ("pretrain", "fedbt-all"): CommRow("fedbt-all", 61.17, 255.57),
    ("pretrain", "fedbt-no-pl"): CommRow("fedbt-no-pl", 7.04, 29.42),
    ("pretrain", "fedbt-no-m"): CommRow("fedbt-no-m", 7.04, 29.42),
    ("pretrain", "fedbt-no-s"): CommRow("fedbt-no-s", 7.04, 29.42),
    ("pretrain", "fedbt-no-sp"): CommRow("fedbt-no-sp", 7.04, 29.42),
    ("finetune", "fedavg"): CommRow("fedavg", 100.0, 435.67),
    ("finetune", "distilbert"): CommRow("fedavg", 60.95, 265.53, arch=None),
    ("finetune", "tinybert-6"): CommRow("fedavg", 60.94, 265.50, arch=TINYBERT_6),
    ("finetune", "tinybert-4"): CommRow("fedavg", 13.09, 57.05, arch=TINYBERT_4),
    ("finetune", "fedbt-ft"): CommRow("fedbt-ft", 20.19, 87.95),
    ("finetune", "fedbt-ft-map"): CommRow("fedbt-ft-map", 20.19, 87.95),
    ("finetune", "fedbt-ft-no-add"): CommRow("fedbt-ft-no-add", 6.51, 28.37),
}
"""Keyed by (scenario, row label); the label is the method name, or the distilled model for FedAvg rows."""


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
