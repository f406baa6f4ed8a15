"""The report specification: which tables exist, their columns (data sets) and rows (method variants), and
which run directories feed each cell. The pipeline writes it as JSON; the report reads nothing else."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIGURE_KINDS = ("rounds", "pareto", "cost", "compute")
PRIVACY_FIGURE = "epsilon"
"""The figure kind of a study with DP runs only: its score against epsilon."""
TIME_FIGURE = "time"
"""A study whose runs have devices also gets ``<name>_time.png|.pdf``: score against simulated wall-clock."""
SCHEDULE_FIGURE = "layer_schedule"
TIER_SUFFIX = "-tiers"
TIER_EXTS = ("md", "tex", "json", "html")
"""The per-tier table of study ``<name>`` is ``<name>-tiers.md|.tex|.json|.html`` (its numbers also in the study's
JSON, per row: ``tiers``)."""


@dataclass(frozen=True)
class Column:
    """One data set of a table: the training data (corpus or task) and the label shown in the header."""

    data: str
    label: str


@dataclass(frozen=True)
class Row:
    """One method variant: its label, method and options, the paper row it corresponds to, the bert-base
    configuration its exact cost ratio is computed for (None: not computable), and its runs per data set."""

    variant: str
    method: str
    options: dict[str, Any]
    runs: dict[str, list[str]]
    paper_row: str | None = None
    bert_base: dict[str, Any] | None = None
    lr_runs: dict[str, dict[str, list[str]]] | None = None
    """For a row with a grid (the study's ``lr_grid`` times the variant's ``grid``): per grid point label
    (``lr0.0003``, ``lr0.0003-mu0.01``), the runs of every data set; the report picks one per data set on dev
    (:mod:`fedbt.report.selection`) and ``runs`` becomes those."""
    not_tuned: str | None = None
    """Why a row of a study with a grid runs at one setting (``variants.<v>.tuned: false``, or no grid of its
    own in a study whose other rows have one); None otherwise."""
    note: str | None = None
    """A sentence the table's caption carries about this row (e.g. the budget a FLOP-matched variant ran at)."""
    tuned_in: dict[str, Any] | None = None
    """For a row of a study with ``lr_from``: ``{"study": <the study its runs took their grid point from>,
    "data": {<data set of this table>: <the data set of that study the point was chosen on>}}``."""


@dataclass(frozen=True)
class Table:
    """One paper-style table."""

    name: str
    title: str
    scenario: str
    columns: list[Column]
    rows: list[Row]
    paper: str | None = None
    reference: str = "fedavg"
    base_arch: str = "bert-base-uncased"
    """The full-size architecture of the exact upload-ratio column (bert-base-uncased; vit-base for vision)."""
    base_tiers: list[dict[str, Any]] | None = None
    """Resource tiers on ``base_arch`` for that column (a study with tiers): the column is their mix."""
    tiered: bool = False
    """Whether the study's runs have resource tiers: the report then writes its per-tier table too."""
    second_reference: str | None = None
    """A second row the headline score of every row is tested against (one more p column)."""
    private: bool = False
    """Whether some run of the study has client-level DP (``privacy``): the report then draws its score against
    epsilon too (``<name>_epsilon.png|.pdf``)."""
    timed: bool = False
    """Whether the study's tiers have devices (``federation.tiers[].device``): the report then adds simulated time
    (:mod:`fedbt.report.deployment`) and the time figure."""
    target: dict[str, float] | None = None
    """The score whose simulated time to reach the table reports: ``{<curve metric>: value}`` (``heldout_mlm_loss``,
    ``dev_accuracy``, ...) or ``{within_pct: x}``: within x % of the reference row's reported score of the same
    seed."""


@dataclass(frozen=True)
class Spec:
    """Every table of a study configuration, and its series (:mod:`fedbt.report.series`, their JSON form)."""

    tables: list[Table] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)


def load_spec(text_or_path: str) -> Spec:
    """Parse a spec from a JSON string or a JSON file path."""
    path = Path(text_or_path)
    text = path.read_text() if not text_or_path.lstrip().startswith("{") and path.is_file() else text_or_path
    return from_dict(json.loads(text))


def from_dict(raw: dict[str, Any]) -> Spec:
    """Build a :class:`Spec` from its JSON form."""
    tables = []
    for table in raw.get("tables", []):
        columns = [Column(**c) for c in table["columns"]]
        rows = [Row(**r) for r in table["rows"]]
        rest = {k: v for k, v in table.items() if k not in ("columns", "rows")}
        tables.append(Table(columns=columns, rows=rows, **rest))
    return Spec(tables, raw.get("series", []))


SERIES_FIGURES = ("cost", "gap")
"""The figures of series ``<name>`` (:mod:`fedbt.report.series`): ``figures/<name>_<kind>.png|pdf``."""


def output_files(
    table_names: list[str],
    out: str = "results",
    tiered: Collection[str] = (),
    private: Collection[str] = (),
    series: Collection[str] = (),
    timed: Collection[str] = (),
) -> dict[str, list[str]]:
    """The files ``fedbt report`` writes for these tables, by kind (``tables``, ``figures``); the tables named in
    ``tiered`` also get their per-tier table, ``<name>-tiers.md|.tex|.json|.html``, those in ``private`` the figure
    ``<name>_epsilon.png|.pdf``, those in ``timed`` their time figure, ``<name>_time.png|.pdf``; each of ``series``
    its table (``<name>.md|.tex|.json|.html``) and figures."""
    tables = [f"{out}/tables/{name}.{ext}" for name in table_names for ext in ("md", "tex", "json", "html")]
    tables += [f"{out}/tables/{name}{TIER_SUFFIX}.{ext}" for name in table_names if name in tiered for ext in TIER_EXTS]
    figures = [
        f"{out}/figures/{name}_{kind}.{ext}" for name in table_names for kind in FIGURE_KINDS for ext in ("png", "pdf")
    ]
    figures += [f"{out}/figures/{name}_{PRIVACY_FIGURE}.{ext}" for name in private for ext in ("png", "pdf")]
    figures += [
        f"{out}/figures/{name}_{TIME_FIGURE}.{ext}" for name in timed if name in table_names for ext in ("png", "pdf")
    ]
    figures += [f"{out}/figures/{SCHEDULE_FIGURE}.{ext}" for ext in ("png", "pdf")]
    tables += [f"{out}/tables/{name}.{ext}" for name in series for ext in ("md", "tex", "json", "html")]
    figures += [
        f"{out}/figures/{name}_{kind}.{ext}" for name in series for kind in SERIES_FIGURES for ext in ("png", "pdf")
    ]
    return {"tables": tables, "figures": figures}
