"""Reports that travel: paths of the machine that wrote them, made relative.

A report is read elsewhere (committed under ``results/``, attached to an MLflow run, mailed),
where ``/home/alice/mdfr/results/data/demo`` means nothing. Every path under the working
directory the report was generated from is written relative to it (``results/data/demo``,
``sqlite:///results/mlflow.db``); paths elsewhere (a dataset on ``/mnt/nfs``) stay as they
are, because there they are the information.
"""

from __future__ import annotations

from pathlib import Path


def portable(text: str, root: Path | None = None) -> str:
    """``text`` with ``root`` (default: the working directory) and its subpaths relative."""
    base = str((root or Path.cwd()).resolve()).rstrip("/")
    if base in ("", "/"):
        return text
    # Longest spellings first: sqlite:////abs/... -> sqlite:///rel/..., then /abs/x -> x.
    text = text.replace(f"sqlite:///{base}/", "sqlite:///")
    text = text.replace(f"file://{base}/", "")
    text = text.replace(f"{base}/", "")
    return text.replace(base, ".")
