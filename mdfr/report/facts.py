"""What a report is about, stated plainly: dataset, codec, scale and run outcomes.

Reports of CPU-scale sweeps on synthetic cameras must never read like the paper's results;
these facts head every report, together with an explicit comparability verdict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mdfr.data.manifest import load_manifest
from mdfr.errors import DataError
from mdfr.names import Tag
from mdfr.report.runs import SweepRuns

PAPER_SCALE = {"epochs": 30, "width": 64, "depth": 4}


def dataset_kind(manifest: dict[str, Any]) -> str:
    """``synthetic`` (made by ``mdfr data synth``), ``camera photos`` or ``unknown``."""
    root = Path(str(manifest.get("inputs", {}).get("root", "")))
    meta = root / "cameras.json"
    if meta.is_file():
        try:
            if str(json.loads(meta.read_text()).get("format", "")).startswith("mdfr-synth"):
                return "synthetic"
        except (OSError, ValueError):
            pass
    if root.is_dir():
        return "camera photos"
    return "unknown"


def describe_codec(spec: str) -> str:
    """A one-line, honest description of an attack spec."""
    kind, _, rest = spec.partition(":")
    if kind == "jpeg":
        return f"JPEG quality {rest}: a classical-compression control, not an AI codec"
    if kind == "learned":
        return (
            "the project's small learned codec (`mdfr codec train`), a CPU-scale stand-in for HiFiC"
        )
    if kind == "compressai":
        return f"CompressAI zoo model `{rest}`: an AI codec, not HiFiC"
    if kind == "external":
        return f"an external codec's output read from `{rest}` (HiFiC if made with its code)"
    return "unknown codec"


def load_manifests(trials: list[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """Dataset path (param ``data.dataset``) -> its manifest, or None when it is gone."""
    out: dict[str, dict[str, Any] | None] = {}
    for path in sorted({r["params"].get("data.dataset", "") for r in trials} - {""}):
        try:
            out[path] = load_manifest(path)
        except DataError:
            out[path] = None
    return out


def _values(trials: list[dict[str, Any]], key: str) -> list[str]:
    return sorted({str(r["params"].get(key, "")) for r in trials} - {""})


def _join(vals: list[str]) -> str:
    return ", ".join(vals) if vals else "?"


def facts(sweep: SweepRuns, manifests: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """Machine-readable facts (also written to ``report.json``)."""
    trials = sweep.trials
    codecs = sorted({str(r["tags"].get(Tag.CODEC, "")) for r in trials} - {""})
    datasets = []
    for path, m in manifests.items():
        if m is None:
            datasets.append({"path": path, "available": False, "kind": "unknown"})
            continue
        splits = {k: int(v.get("patches", 0)) for k, v in m.get("splits", {}).items()}
        datasets.append(
            {
                "path": path,
                "available": True,
                "kind": dataset_kind(m),
                "hash": m.get("dataset_hash"),
                "classes": len(m.get("classes", [])),
                "codec": m.get("codec", {}).get("spec"),
                "patch": m.get("patch"),
                "patches": splits,
                "images": m.get("inputs", {}).get("images"),
                "images_root": m.get("inputs", {}).get("root"),
            }
        )
        if m.get("codec", {}).get("spec") and m["codec"]["spec"] not in codecs:
            codecs.append(m["codec"]["spec"])
    pre_epochs = _values(sweep.pretrains, "train.epochs")
    return {
        "datasets": datasets,
        "dataset_hashes": sorted({str(r["tags"].get(Tag.DATASET_HASH, "")) for r in trials} - {""}),
        "codecs": codecs,
        "backbones": _values(trials, "model.backbone"),
        "epochs": _values(trials, "train.epochs"),
        "pretrain_epochs": pre_epochs,
        "width": _values(trials, "model.width"),
        "depth": _values(trials, "model.depth"),
        "batch_size": _values(trials, "data.batch_size"),
        "limit_train": _values(trials, "data.limit_train"),
        "limit_eval": _values(trials, "data.limit_eval"),
        "devices": _values(trials, "train.device"),
        "git_commits": sorted({str(r["tags"].get(Tag.GIT_COMMIT, "")) for r in trials} - {""}),
        "trials": len(trials),
        "pretrain_runs": len(sweep.pretrains),
        "outcomes": sweep.outcome_counts(),
    }


def _limit(vals: list[str]) -> str:
    return _join(["all" if v == "0" else v for v in vals])


def comparability(f: dict[str, Any]) -> list[str]:
    """Why these numbers are not the paper's (empty when the setting matches)."""
    why = []
    kinds = {d["kind"] for d in f["datasets"]}
    if kinds & {"synthetic"}:
        why.append("the dataset is synthetic cameras, not VISION")
    elif kinds != {"camera photos"}:
        why.append("the dataset could not be identified as VISION")
    if not any(c.startswith("external:") for c in f["codecs"]):
        why.append("the attack is not HiFiC (" + _join(f["codecs"]) + ")")
    if any(int(e) < PAPER_SCALE["epochs"] for e in f["epochs"] if e.isdigit()):
        why.append(f"training is shorter than the paper's 30 epochs ({_join(f['epochs'])})")
    if any(w != str(PAPER_SCALE["width"]) for w in f["width"]) or any(
        d != str(PAPER_SCALE["depth"]) for d in f["depth"]
    ):
        why.append(
            f"MDFRNet is smaller than the paper's (width {_join(f['width'])}, depth "
            f"{_join(f['depth'])} vs 64, 4)"
        )
    if any(lt != "0" for lt in f["limit_train"]) or any(le != "0" for le in f["limit_eval"]):
        why.append(
            f"splits are capped (train {_limit(f['limit_train'])}, eval "
            f"{_limit(f['limit_eval'])} patches)"
        )
    return why


def bullets(sweep: SweepRuns, f: dict[str, Any]) -> list[str]:
    """The "what this report is" list."""
    out = []
    if sweep.parent is not None:
        out.append(
            f"Sweep `{sweep.name}` (parent run `{sweep.parent['run_id']}`, MLflow status "
            f"{sweep.parent['status']}) in experiment `{sweep.experiment}` at "
            f"`{sweep.tracking_uri}`."
        )
        if sweep.other_parents:
            ids = ", ".join(f"`{p['run_id']}`" for p in sweep.other_parents)
            out.append(
                f"Older sweeps of the same name in this experiment are not included: {ids} "
                "(pass `--sweep RUN_ID` to report one of them)."
            )
    else:
        out.append(
            f"Runs of experiment `{sweep.experiment}` at `{sweep.tracking_uri}` without a "
            "sweep parent run."
        )
    for d in f["datasets"]:
        if not d["available"]:
            out.append(f"Dataset `{d['path']}`: gone from disk (only its hash is known).")
            continue
        kind = {
            "synthetic": "**synthetic** camera dataset (simulated camera pipelines over "
            "scikit-image photos), not VISION",
            "camera photos": "real camera photos in the VISION layout",
        }.get(d["kind"], "of unknown origin (its source images folder is gone)")
        split = ", ".join(f"{k} {v}" for k, v in d["patches"].items())
        out.append(
            f"Dataset `{d['path']}` (hash `{d['hash']}`): {kind}; {d['classes']} camera models, "
            f"{d['images']} images, {d['patch']}×{d['patch']} patches ({split})."
        )
    if not f["datasets"] and f["dataset_hashes"]:
        out.append(f"Dataset hash(es) {_join(f['dataset_hashes'])}; path not recorded.")
    for c in f["codecs"]:
        out.append(f"Attack `{c}`: {describe_codec(c)}.")
    pre = (
        f" (CMI pretraining: {_join(f['pretrain_epochs'])} epoch(s))"
        if f["pretrain_epochs"]
        else ""
    )
    out.append(
        f"Scale: backbone {_join(f['backbones'])}; {_join(f['epochs'])} epoch(s){pre}; "
        f"MDFRNet width {_join(f['width'])}, depth {_join(f['depth'])}; batch "
        f"{_join(f['batch_size'])}; patches per epoch {_limit(f['limit_train'])}, per "
        f"evaluation {_limit(f['limit_eval'])}; device {_join(f['devices'])}."
    )
    o = f["outcomes"]
    out.append(
        f"Runs: {f['trials']} trial(s): {o.get('ok', 0)} finished, {o.get('diverged', 0)} "
        f"diverged, {o.get('failed', 0)} failed, {o.get('pruned', 0)} pruned (ASHA), "
        f"{o.get('running', 0)} still running or unclosed; {f['pretrain_runs']} pretraining "
        "run(s). Only finished trials enter the tables."
    )
    if f["git_commits"]:
        out.append(f"Code: git commit {_join([c[:12] for c in f['git_commits']])}.")
    why = comparability(f)
    if why:
        out.append(
            "**Not comparable with the paper's numbers**: "
            + "; ".join(why)
            + ". The paper's values are shown for orientation only."
        )
    return out
