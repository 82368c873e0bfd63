"""Import boundaries, enforced: Ray only under mdfr/sweep/, MLflow only in mdfr/tracking/,
no torch or Ray on the paths that must stay fast (``mdfr --help``, ``mdfr sweep validate``,
``mdfr train --check``), and every import inside a function marked as a lazy boundary."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mdfr"
HEAVY = ("torch", "ray", "mlflow", "optuna", "timm", "compressai")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in ``path``, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def _where(package: str) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for path in _modules():
        for line, top in _imported(path):
            if top == package:
                found.setdefault(str(path.relative_to(ROOT)), []).append(line)
    return found


def test_ray_is_imported_only_under_mdfr_sweep():
    """Everything else (the bench included) reaches Ray through mdfr.sweep."""
    outside = {f: lines for f, lines in _where("ray").items() if not f.startswith("mdfr/sweep/")}
    assert not outside, f"Ray imported outside mdfr/sweep/: {outside}"


def test_mlflow_is_imported_only_in_tracking():
    outside = {f: ln for f, ln in _where("mlflow").items() if not f.startswith("mdfr/tracking/")}
    assert not outside, f"MLflow imported outside mdfr/tracking/: {outside}"


def test_engine_models_losses_and_data_know_nothing_of_ray_or_mlflow():
    pure = ("mdfr/engine.py", "mdfr/losses.py", "mdfr/models/", "mdfr/data/", "mdfr/config.py",
            "mdfr/trained.py", "mdfr/identify.py")  # fmt: skip
    for package in ("ray", "mlflow"):
        bad = [f for f in _where(package) if f.startswith(pure)]
        assert not bad, f"{package} imported in {bad}"


def _lazy_imports_without_a_comment(path: Path) -> list[str]:
    """Functions importing mdfr modules without saying why (a ``Lazy`` comment above)."""
    src = path.read_text()
    lines = src.splitlines()
    bad = []
    for node in ast.walk(ast.parse(src)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        imports = [
            n
            for n in ast.walk(node)
            if isinstance(n, ast.Import | ast.ImportFrom)
            and any(
                name.startswith("mdfr")
                for name in (
                    [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
                )
            )
        ]
        if not imports:
            continue
        first = min(i.lineno for i in imports)
        if "Lazy" not in "\n".join(lines[node.lineno - 1 : first - 1]):
            bad.append(f"{path.relative_to(ROOT)}:{first} in {node.name}()")
    return bad


def test_every_import_inside_a_function_is_a_commented_lazy_boundary():
    """mdfr modules are imported at the top; an import inside a function is a deliberate
    boundary (keeping torch/Ray/MLflow off a fast path, or breaking a cycle) and says so."""
    bad = [b for path in _modules() for b in _lazy_imports_without_a_comment(path)]
    assert not bad, "imports inside functions without a '# Lazy: why' comment:\n" + "\n".join(bad)


PROBE = """
import json, sys
from mdfr.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


def _probe(*argv: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("sweep", "validate", "sweeps/smoke.yaml"),
        ("sweep", "validate", "sweeps/table2.yaml"),
        ("sweep", "validate", "tests/sweeps_invalid/unknown_backbone.yaml"),
        ("train", "sweeps/trials/mdfr.yaml", "--check"),
    ],
    ids=["help", "validate_smoke", "validate_table2", "validate_invalid", "train_check"],
)
def test_fast_paths_import_no_torch_ray_or_mlflow(argv):
    """Checked in a fresh interpreter: what `mdfr ...` really loads."""
    got = _probe(*argv)
    assert got["code"] in (0, 2), got
    assert got["heavy"] == [], f"mdfr {' '.join(argv)} imported {got['heavy']}"
