"""Trained networks as MLflow 3 logged models, the registry champion, and loading them back.

**Logging** (:func:`log_model`): a :class:`~mdfr.trained.TrainedModel` becomes a ``LoggedModel``
of the run that trained it, through MLflow's client API (explicit ids, no active run):
``create_logged_model`` -> ``log_outputs`` (the run's Model column and page link to it) ->
``mlflow.pytorch.save_model`` -> ``log_model_artifacts`` -> ``finalize_logged_model(READY)``.

- Format: PyTorch flavour, ``serialization_format="pt2"``: the network is exported as a graph
  (``torch.export``) with a dynamic batch dimension. Loading it runs no pickled code and needs
  neither mdfr nor its model classes, only torch. (MLflow 3.17 refuses pickled models at load
  unless told otherwise, so there is no pickle fallback: a network torch cannot export is not
  logged, and the run says why in its ``mdfr.model_error`` tag.)
- Signature: input ``patches`` ``(-1, 3, 64, 64)`` float32, output ``logits`` ``(-1, V, C)``
  float32 (see :mod:`mdfr.models.identifier` for the views).
- Metadata ``mdfr``: class names, views, backbone, setup, dataset hash, codec, ... (everything
  :func:`mdfr.trained.load_trial` puts in ``info``), so a model is usable on its own.
- The run's final ``val/*`` and ``test/*`` metrics are linked to the model (and to the run's
  ``eval`` dataset), so the experiment's Models tab compares models by them.
- Idempotent: a run that already has a ready model of that name keeps it (retries, resume).

**Registry** (:func:`register`): one version per champion under a registered model, an alias
pointing at it, the selection rule in the version's description.

**Loading** (:func:`load_model`): ``models:/<name>@<alias>``, ``models:/<name>/<version>``,
``models:/<model id>``, ``runs:/<run id>/...``, a bare run id (its logged model), a local
MLflow model folder, or a trial's output folder (rebuilt without MLflow).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from mdfr import trained
from mdfr.errors import MdfrError, UsageError
from mdfr.tracking.store import Store, _retry, process_uri

MODEL_TYPES = {"mdfr": "cmi-restorer", "finetune": "cmi-classifier", "pretrain": "cmi-classifier"}
METADATA_KEY = "mdfr"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_NOT_IN_NAMES = re.compile(r"[/:.%\"'\s]+")  # characters MLflow refuses in logged model names


def model_name(text: str) -> str:
    """``text`` as a valid logged-model name (``/ : . %`` quotes and spaces become ``-``)."""
    return _NOT_IN_NAMES.sub("-", text).strip("-") or "model"


# --------------------------------------------------------------------------- logging


def signature(info: dict[str, Any]) -> Any:
    """The model signature: patches in, per-view logits out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    p = int(info["patch"])
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, p, p), "patches")]),
        outputs=Schema(
            [
                TensorSpec(
                    np.dtype(np.float32), (-1, len(info["views"]), len(info["classes"])), "logits"
                )
            ]
        ),
    )


def logged_models_of(store: Store, run_id: str) -> list[Any]:
    """The run's ready logged models (``LoggedModel``), newest step last."""
    from mlflow.entities import LoggedModelStatus

    run = _retry(store.client.get_run, run_id)
    outputs = sorted(run.outputs.model_outputs if run.outputs else [], key=lambda o: o.step)
    models = [_retry(store.client.get_logged_model, o.model_id) for o in outputs]
    return [m for m in models if m.status == LoggedModelStatus.READY]


def log_model(
    store: Store,
    run_id: str,
    trained: Any,
    name: str,
    tags: dict[str, str] | None = None,
    step: int = 0,
) -> str:
    """Log ``trained`` (a :class:`mdfr.trained.TrainedModel`) as a model of run ``run_id``.

    Returns:
        The logged model's id (an existing one when the run already has ``name``).
    """
    from mlflow.entities import LoggedModelOutput

    name = model_name(name)
    for m in logged_models_of(store, run_id):
        if m.name == name:
            return m.model_id
    client = store.client
    run = _retry(client.get_run, run_id)
    model = _retry(
        client.create_logged_model,
        run.info.experiment_id,
        name=name,
        source_run_id=run_id,
        tags={**(tags or {}), "mdfr.kind": str(trained.info["kind"])},
        params={k: str(v) for k, v in run.data.params.items()},
        model_type=MODEL_TYPES.get(str(trained.info["kind"]), "cmi-classifier"),
    )
    try:
        _retry(client.log_outputs, run_id, [LoggedModelOutput(model.model_id, step)])
        with tempfile.TemporaryDirectory(prefix="mdfr-model-") as tmp:
            path = Path(tmp) / "model"
            _save(trained, path, model, run_id)
            _retry(client.log_model_artifacts, model.model_id, str(path))
        _link_metrics(store, run, model.model_id, step)
        _retry(client.finalize_logged_model, model.model_id, "READY")
    except BaseException:
        _retry(client.finalize_logged_model, model.model_id, "FAILED")
        raise
    return model.model_id


def add_output(store: Store, run_id: str, model_id: str, step: int = 0) -> None:
    """Link an existing logged model to another run as its output (a sweep's parent run shows
    its champion in the UI's Models column)."""
    from mlflow.entities import LoggedModelOutput

    run = _retry(store.client.get_run, run_id)
    if any(o.model_id == model_id for o in (run.outputs.model_outputs if run.outputs else [])):
        return
    _retry(store.client.log_outputs, run_id, [LoggedModelOutput(model_id, step)])


def _save(trained: Any, path: Path, model: Any, run_id: str) -> None:
    """``mlflow.pytorch.save_model`` as a pt2 graph into ``path`` (the model's MLmodel names
    its logged model and run)."""
    import mlflow.pytorch
    import torch
    from mlflow.models import Model

    info = trained.info
    p = int(info["patch"])
    # Batch 2 in the example: torch.export keeps a size-1 batch dimension static.
    example = torch.rand(2, 3, p, p, generator=torch.Generator().manual_seed(0))
    mlflow_model = Model(
        artifact_path=model.artifact_location,
        run_id=run_id,
        model_uuid=model.model_id,
        model_id=model.model_id,
        metadata={METADATA_KEY: info},
    )
    module = trained.module.cpu().eval()
    try:
        mlflow.pytorch.save_model(
            module,
            str(path),
            mlflow_model=mlflow_model,
            signature=signature(info),
            input_example=example.numpy(),
            serialization_format="pt2",
            # Explicit: MLflow would otherwise load the model in a subprocess to infer them.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    except Exception as e:  # noqa: BLE001 - torch.export raises many types
        raise MdfrError(f"cannot save the network as a pt2 MLflow model: {e}") from e


def _link_metrics(store: Store, run: Any, model_id: str, step: int) -> None:
    """The run's final val/test metrics, again, as metrics of the model on the eval dataset."""
    from mlflow.entities import Metric

    evals = [
        d.dataset
        for d in (run.inputs.dataset_inputs if run.inputs else [])
        if any(t.key == "mlflow.data.context" and t.value == "eval" for t in d.tags)
    ]
    ds = {"dataset_name": evals[0].name, "dataset_digest": evals[0].digest} if evals else {}
    now = int(time.time() * 1000)
    # The run object was read before the model existed; its metrics are the final ones.
    items = [
        Metric(k, float(v), now, step, model_id=model_id, run_id=run.info.run_id, **ds)
        for k, v in run.data.metrics.items()
        if k.startswith(("val/", "test/"))
    ]
    if items:
        _retry(store.client.log_batch, run.info.run_id, metrics=items)


# --------------------------------------------------------------------------- registry


def register(
    store: Store,
    model_id: str,
    name: str,
    alias: str,
    description: str,
    tags: dict[str, str] | None = None,
) -> str:
    """Register logged model ``model_id`` as a version of ``name`` and point ``alias`` at it.

    Returns:
        The version number. A model already behind ``alias`` is not registered twice.
    """
    from mlflow.exceptions import MlflowException

    client = store.client
    try:
        _retry(client.create_registered_model, name, description=_MODEL_DESCRIPTION)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    try:
        current = _retry(client.get_model_version_by_alias, name, alias)
    except MlflowException:
        current = None
    # The SQL registry keeps the source URI, not the model id.
    if current is not None and model_id in (
        current.model_id,
        current.source.removeprefix("models:/"),
    ):
        return str(current.version)
    logged = _retry(client.get_logged_model, model_id)
    # models:/<id> as the source links the version to its logged model in the UI; MLflow's SQL
    # registry resolves it through the process-wide tracking URI, not this client's.
    with process_uri(store.uri):
        version = _retry(
            client.create_model_version,
            name,
            source=f"models:/{model_id}",
            run_id=logged.source_run_id,
            tags=tags,
            description=description,
            model_id=model_id,
        )
    _retry(client.set_registered_model_alias, name, alias, version.version)
    return str(version.version)


_MODEL_DESCRIPTION = (
    "MDFRNet + CMI networks trained by mdfr sweeps of this experiment. Input: (N, 3, 64, 64) "
    "float32 RGB patches in [0, 1]; output: (N, views, classes) logits (metadata 'mdfr' names "
    "views and classes). `mdfr identify IMAGES --model models:/<name>@champion` uses it."
)


# --------------------------------------------------------------------------- loading


def load_model(uri: str, tracking_uri: str, device: str = "cpu") -> Any:
    """A :class:`mdfr.trained.TrainedModel` from any URI form (see the module docstring).

    Raises:
        UsageError: malformed or unknown URI, or not an mdfr model.
        MdfrError: the store or the model's files cannot be read.
    """
    local = Path(uri).expanduser()
    if local.exists():
        if (local / "MLmodel").is_file():
            return _load_local(local, uri, device)
        if trained.is_trial_folder(local):
            model = trained.load_trial(local)
            model.module.to(device)
            return model
        raise UsageError(
            f"--model {uri}: neither an MLflow model folder (with an MLmodel file) nor a "
            "trial folder (config.yaml + checkpoint/state.pt)"
        )
    check_uri(uri)
    if _RUN_ID.match(uri):
        uri = _run_model_uri(uri, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="mdfr-identify-") as tmp:
        return _load_local(Path(download(uri, tracking_uri, tmp)), uri, device)


def check_uri(uri: str) -> None:
    """Refuse what is neither a model URI nor a run id (paths are checked by the caller).

    Raises:
        UsageError: naming the accepted forms.
    """
    if not (_RUN_ID.match(uri) or uri.startswith(("models:/", "runs:/"))):
        raise UsageError(
            f"--model {uri!r}: no such path, and not a model URI; expected "
            "models:/<name>@<alias>, models:/<name>/<version>, models:/<model id>, "
            "runs:/<run id>/<path>, a run id, or a local path"
        )


def _run_model_uri(run_id: str, tracking_uri: str) -> str:
    from mlflow.exceptions import MlflowException

    store = Store(tracking_uri)
    try:
        models = logged_models_of(store, run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise UsageError(f"--model {run_id}: no such run in {store.uri}") from None
        raise MdfrError(f"--model {run_id}: cannot read the run from {store.uri}: {e}") from None
    if not models:
        raise UsageError(
            f"--model {run_id}: that run has no logged model (sweeps log only the champion "
            "unless the sweep file says log_models: all)"
        )
    return f"models:/{models[-1].model_id}"


def download(uri: str, tracking_uri: str, dst: str) -> str:
    """Download the model at ``uri`` (``models:/...``, ``runs:/...``) into ``dst``.

    Returns:
        The local model folder.

    Raises:
        UsageError: no such model. MdfrError: the store or its files cannot be read.
    """
    with process_uri(tracking_uri):  # logged models resolve through the process-wide URI
        return _download(uri, tracking_uri, dst)


def _download(uri: str, tracking_uri: str, dst: str) -> str:
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    # A progress bar per file on stderr says nothing to an `mdfr identify` user.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no Store made here
    try:
        return mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=dst, tracking_uri=tracking_uri, registry_uri=tracking_uri
        )
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise UsageError(f"--model {uri}: not found in {tracking_uri} ({e.message})") from None
        raise MdfrError(f"--model {uri}: cannot download it from {tracking_uri}: {e}") from None
    except OSError as e:
        raise MdfrError(f"--model {uri}: cannot download it from {tracking_uri}: {e}") from None


def _load_local(path: Path, uri: str, device: str) -> Any:
    import mlflow.pytorch
    from mlflow.models import Model

    meta = (Model.load(str(path)).metadata or {}).get(METADATA_KEY)
    if not isinstance(meta, dict) or "classes" not in meta or "views" not in meta:
        raise UsageError(
            f"--model {uri}: not a model logged by mdfr (no '{METADATA_KEY}' metadata naming "
            "classes and views)"
        )
    # torch.export logs a broken archive's traceback as a warning before it raises; the
    # error below says it in one line.
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.ERROR)
    try:
        module = mlflow.pytorch.load_model(str(path), device=device)
    except Exception as e:  # noqa: BLE001 - torch/MLflow raise many types for broken files
        raise MdfrError(f"--model {uri}: cannot load the network: {e}") from None
    finally:
        export_log.setLevel(level)
    return trained.TrainedModel(module, dict(meta))
