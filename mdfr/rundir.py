"""The output folder of a hand-run trial (``mdfr train``): named from the config, claimed
before anything is written, and never silently shared by two configs.

- **Placeholders**: ``output_dir`` and ``model.cmi_checkpoint`` may name config keys in
  braces, ``results/runs/pretrain-{model.backbone}-s{seed}``; ``--set model.backbone=remnet``
  then writes to, and an mdfr trial then reads from, the folder of that backbone.
- **Claim**: ``<output_dir>/mdfr_run.json`` records the config hash of the run that writes
  there. A folder holding another config's run (or files mdfr did not write) is refused
  unless the user passes ``--force``; the same config may continue (``--resume``) or rerun.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mdfr.config import TrialConfig
from mdfr.errors import ConfigError, UsageError

CLAIM_FILE = "mdfr_run.json"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")
TEMPLATED = ("output_dir", "model.cmi_checkpoint")


def expand(cfg: TrialConfig) -> TrialConfig:
    """``cfg`` with ``{dotted.key}`` placeholders in :data:`TEMPLATED` keys filled in.

    Raises:
        ConfigError: a placeholder that is not a config key, naming the known ones.
    """
    flat = cfg.to_flat_dict()
    changes: dict[str, Any] = {}
    for key in TEMPLATED:
        value = flat.get(key)
        if not isinstance(value, str) or "{" not in value:
            continue

        def fill(m: re.Match[str], key: str = key) -> str:
            name = m.group(1)
            if name not in flat or name in TEMPLATED:
                known = ", ".join(k for k in sorted(flat) if k not in TEMPLATED)
                raise ConfigError(key, f"unknown placeholder {{{name}}}; config keys: {known}")
            return str(flat[name])

        changes[key] = _PLACEHOLDER.sub(fill, value)
    return cfg.replace(**changes) if changes else cfg


def claim(cfg: TrialConfig, force: bool = False) -> Path:
    """Make ``cfg.output_dir`` this config's folder, or refuse (see the module docstring).

    Raises:
        UsageError: the folder holds another config's run, or files mdfr did not write,
            and ``force`` is not set; or it is not a folder.
    """
    out = Path(cfg.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"output_dir {out} is a file, not a folder")
    mine = {"config_hash": cfg.hash(), "mode": cfg.mode, "backbone": cfg.model.backbone}
    theirs = _owner(out)
    if theirs is not None and theirs.get("config_hash") != mine["config_hash"] and not force:
        raise UsageError(
            f"output_dir {out} holds a run of another config (hash {theirs.get('config_hash')}, "
            f"mode {theirs.get('mode')}, backbone {theirs.get('backbone')}; this one is "
            f"{mine['config_hash']}): choose another output_dir (placeholders like "
            "{model.backbone} and {seed} help) or pass --force to write over it"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / CLAIM_FILE).write_text(json.dumps(mine, indent=1) + "\n")
    return out


def _owner(out: Path) -> dict[str, Any] | None:
    """Who wrote ``out``: its claim, an older run's checkpoint hash, or "unknown" files."""
    if not out.is_dir():
        return None
    state = out / "checkpoint" / "state.pt"
    try:
        doc = json.loads((out / CLAIM_FILE).read_text())
        if isinstance(doc, dict):
            # A claim without a checkpoint is a run killed before its first epoch ended.
            return doc if state.is_file() or (out / "cmi.pt").is_file() else None
    except (OSError, ValueError):
        pass
    if state.is_file():  # a run from before claims existed: its checkpoint names its config
        # Lazy: only old run folders need torch to read their checkpoint.
        from mdfr.checkpoints import safe_load

        try:
            return {"config_hash": safe_load(state).get("cfg_hash"), "mode": "?", "backbone": "?"}
        except UsageError:
            return {"config_hash": "unreadable checkpoint", "mode": "?", "backbone": "?"}
    if any(out.iterdir()):
        return {"config_hash": "none (files mdfr did not write)", "mode": "?", "backbone": "?"}
    return None
