"""Progress display: a tqdm bar on a terminal, plain log lines otherwise (CI, Snakemake logs)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
log = logging.getLogger("fedbt.progress")


def progress(
    items: Iterable[T], description: str, total: int | None = None, initial: int = 0, leave: bool = True
) -> Iterator[T]:
    """Iterate ``items`` with a progress bar when stderr is a terminal, else log one line per item."""
    if sys.stderr.isatty():
        yield from tqdm(items, desc=description, total=total, initial=initial, leave=leave, dynamic_ncols=True)
        return
    items = list(items)
    count = total if total is not None else initial + len(items)
    for position, item in enumerate(items, start=initial + 1):
        log.info("%s %d/%d", description, position, count)
        yield item
