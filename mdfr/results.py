"""What one trial produces: :class:`TrialResult`, the engine's return value.

The same shape whatever happened (``status`` says what): a diverged trial has empty accuracies,
not a different set of keys. It crosses process boundaries as JSON (``to_dict``/``from_dict``):
``mdfr train --json``, a sweep trial's ``mdfr_result.json``, the pretraining cache's
``result.json``. A sweep's ``train_fn`` may return a plain dict of the same keys (benchmarks and
tests do); :meth:`TrialResult.coerce` reads either.

Imports neither torch nor Ray nor MLflow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mdfr.names import Outcome, final_metrics, is_test_result


@dataclass(frozen=True)
class TrialResult:
    """One trial's outcome.

    Attributes:
        status: ``ok``, or ``diverged`` (a non-finite loss stopped training).
        epochs: epochs trained (the epoch it diverged in, when diverged).
        output_dir: the trial's folder (checkpoints, confusion matrices, config).
        dataset_hash: content hash of the prepared dataset it trained on.
        checkpoint: folder of the last saved training state ("" when none was saved).
        accuracy: test accuracies by result key (``acc_original``, ``bacc_restored``, ...; see
            :mod:`mdfr.engine`); empty when diverged. Pretrain trials have no ``*_restored``.
        per_model: view -> camera model -> accuracy on the test split.
        confusion: view -> confusion-matrix PNG.
        test_patches: patches in the test split.
        cmi_checkpoint: the exported CMI network (pretrain, finetune), else "".
        cmi_sha256: its content hash.
        last_epoch: the last epoch's numeric metrics (``val/acc``, ``train/loss``, ...).
    """

    status: str
    epochs: int
    output_dir: str = ""
    dataset_hash: str = ""
    checkpoint: str = ""
    accuracy: dict[str, float] = field(default_factory=dict)
    per_model: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: dict[str, str] = field(default_factory=dict)
    test_patches: int = 0
    cmi_checkpoint: str = ""
    cmi_sha256: str = ""
    last_epoch: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == Outcome.OK

    @property
    def test_metrics(self) -> dict[str, float]:
        """The test accuracies under their metric names (``test/acc_restored``, ...)."""
        return final_metrics(self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the fields, with the accuracies as top-level ``acc_*``/``bacc_*`` keys."""
        d = dataclasses.asdict(self)
        return {**{k: v for k, v in d.items() if k != "accuracy"}, **d["accuracy"]}

    def scalars(self) -> dict[str, Any]:
        """The flat, scalar part of :meth:`to_dict` (what the pretraining cache keeps)."""
        return {k: v for k, v in self.to_dict().items() if isinstance(v, str | int | float | bool)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialResult:
        """Inverse of :meth:`to_dict`; keys it does not know (a cache's ``run_id``) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)} - {"accuracy"}
        return cls(
            status=str(d.get("status", Outcome.OK)),
            epochs=int(d.get("epochs", 0)),
            accuracy={k: float(v) for k, v in d.items() if is_test_result(k)},
            **{k: v for k, v in d.items() if k in known - {"status", "epochs"}},
        )

    @classmethod
    def coerce(cls, value: TrialResult | dict[str, Any]) -> TrialResult:
        """A ``train_fn``'s return value (a TrialResult, or a dict of its keys) as one."""
        return value if isinstance(value, TrialResult) else cls.from_dict(value)
