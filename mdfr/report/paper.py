"""The paper's reference numbers (``results/paper_tables.yaml``), to put beside ours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mdfr.errors import UsageError

# The copy kept in the repository, found relative to the package so reports work from any
# working directory of a source checkout.
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "results" / "paper_tables.yaml"

# Our backbone registry names -> the paper's Table I row keys.
BACKBONE_ALIASES = {"res2net50": "res2net", "mobilenetv3": "mobilenet"}


def load(path: str | Path | None = None) -> dict[str, Any]:
    """Read the paper's tables.

    Args:
        path: the YAML file; default ``results/paper_tables.yaml`` of this checkout.

    Raises:
        UsageError: the file is missing or is not the expected mapping.
    """
    p = Path(path) if path else DEFAULT_PATH
    if not p.is_file():
        raise UsageError(
            f"paper reference numbers not found at {p}: restore results/paper_tables.yaml "
            "from git (`git checkout -- results/paper_tables.yaml`) or pass --paper PATH"
        )
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"{p}: invalid YAML ({e})") from None
    if not isinstance(doc, dict) or not {"table1", "table2"} <= set(doc):
        raise UsageError(f"{p}: expected a mapping with 'table1' and 'table2'")
    return doc


def table2_value(paper: dict[str, Any], setup: str) -> float | None:
    """The paper's Table II accuracy (percent) for ``setup``, or None."""
    v = (paper.get("table2") or {}).get(setup)
    return float(v) if isinstance(v, int | float) else None


def table1_row(paper: dict[str, Any], backbone: str) -> dict[str, float] | None:
    """The paper's Table I row (original/compressed/restored, percent) for ``backbone``."""
    rows = paper.get("table1") or {}
    row = rows.get(backbone) or rows.get(BACKBONE_ALIASES.get(backbone, ""))
    return {k: float(v) for k, v in row.items()} if isinstance(row, dict) else None
