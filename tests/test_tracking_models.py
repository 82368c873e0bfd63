"""MLflow-native runs against real MLflow (SQLite): dataset inputs, standard tags, experiment
kind, logged models (pt2 export, signature, metadata), the registry champion, loading a model
back by every URI form, the sweep's trial table and report on its parent run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mdfr.errors import MdfrError, UsageError
from mdfr.tracking import EXPERIMENT_KIND, Store
from mdfr.tracking import models as tm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(f"sqlite:///{tmp_path_factory.mktemp('mlmodels') / 'mlflow.db'}")


@pytest.fixture(scope="module")
def exp(store):
    return store.ensure_experiment("mdfr-models-test")


@pytest.fixture(scope="module")
def logged(store, exp, trained_trials):
    """Each trained trial logged as the model of its own run: {mode: (run id, model id)}."""
    from mdfr import trained

    parent, _ = store.ensure_run(exp, {"mdfr.kind": "sweep", "mdfr.sweep_id": "s"}, {}, "s")
    out = {}
    for mode, folder in trained_trials.items():
        run_id, _ = store.child_run(exp, parent, f"t-{mode}", {"mdfr.mode": mode})
        model_id = tm.log_model(store, run_id, trained.load_trial(folder), f"t.{mode}", step=1)
        out[mode] = (run_id, model_id)
    return out


def test_experiments_are_model_training_experiments(store, exp):
    assert store.client.get_experiment(exp).tags.items() >= EXPERIMENT_KIND.items()
    # one made before mdfr tagged experiments gets the tag when mdfr uses it
    old = store.client.create_experiment("made-elsewhere")
    assert "mlflow.experimentKind" not in store.client.get_experiment(old).tags
    assert store.ensure_experiment("made-elsewhere") == old
    assert store.client.get_experiment(old).tags.items() >= EXPERIMENT_KIND.items()


def test_every_run_carries_the_standard_source_tags(store, exp):
    run_id, _ = store.child_run(exp, "p", "plain")
    tags = store.client.get_run(run_id).data.tags
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"] == "mdfr"
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["mlflow.user"]
    # a sweep hands its own (sweep file, user, commit) to every run, whoever runs it
    from mdfr.tracking import source_tags

    given = {**source_tags("/x/sweeps/smoke.yaml", "ana"), "mlflow.source.git.commit": "c0ffee"}
    run_id, _ = store.child_run(exp, "p", "given", given)
    tags = store.client.get_run(run_id).data.tags
    assert {k: tags[k] for k in given} == given


def test_dataset_inputs_name_the_attack_and_the_content_hash(store, exp, tiny_dataset):
    from mdfr.data.loader import load_manifest

    manifest = load_manifest(tiny_dataset)
    run_id, _ = store.child_run(exp, "p", "with-data")
    tracker = store.tracker(run_id)
    tracker.log_dataset(str(tiny_dataset), manifest)
    tracker.log_dataset(str(tiny_dataset), manifest)  # a retried trial logs it again
    inputs = store.client.get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 2
    by_context = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): i for i in inputs
    }
    assert set(by_context) == {"train", "eval"}
    for context, item in by_context.items():
        ds = item.dataset
        assert ds.name == f"{tiny_dataset.name}/{context}"
        assert ds.digest == manifest["dataset_hash"]
        assert ds.source_type == "local" and json.loads(ds.source) == {"uri": str(tiny_dataset)}
        tags = {t.key: t.value for t in item.tags}
        assert tags["mdfr.codec"] == "jpeg:50"
        assert float(tags["mdfr.psnr"]) == pytest.approx(manifest["stats"]["psnr"]["mean"], 1e-3)
        assert "mlflow_tensorspec" in json.loads(ds.schema)
    profile = json.loads(by_context["eval"].dataset.profile)
    assert profile["codec"] == "jpeg:50"
    assert profile["test"]["patches"] == manifest["splits"]["test"]["patches"]
    assert json.loads(by_context["train"].dataset.profile)["train"]["bpp"] > 0


def test_logged_model_is_a_pt2_graph_with_signature_and_class_names(
    store, logged, tiny_dataset, tmp_path
):
    from mlflow.models import Model

    from mdfr.data.loader import load_manifest

    classes = load_manifest(tiny_dataset)["classes"]
    for mode, views in (("mdfr", ["input", "restored"]), ("finetune", ["input"])):
        run_id, model_id = logged[mode]
        model = store.client.get_logged_model(model_id)
        assert model.source_run_id == run_id and str(model.status).endswith("READY")
        assert model.tags["mdfr.kind"] == mode
        run = store.client.get_run(run_id)
        assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
        path = tm.download(f"models:/{model_id}", store.uri, str(tmp_path / mode))
        mlmodel = Model.load(path)
        assert (Path(path) / "data" / "model.pt2").is_file()  # a graph, no pickled code
        assert not list(Path(path).rglob("*.pth"))
        sig = mlmodel.signature.to_dict()
        assert '"shape": [-1, 3, 64, 64]' in sig["inputs"]
        assert f'"shape": [-1, {len(views)}, {len(classes)}]' in sig["outputs"]
        assert mlmodel.metadata["mdfr"]["classes"] == classes
        assert mlmodel.metadata["mdfr"]["views"] == views


def test_logging_again_keeps_the_one_model(store, logged, trained_trials):
    from mdfr import trained

    run_id, model_id = logged["mdfr"]
    again = tm.log_model(store, run_id, trained.load_trial(trained_trials["mdfr"]), "t.mdfr")
    assert again == model_id
    assert len(store.client.get_run(run_id).outputs.model_outputs) == 1


@pytest.mark.parametrize("form", ["run", "model", "path", "trial"])
def test_every_uri_form_loads_the_same_network(store, logged, trained_trials, form, tmp_path):
    from mdfr import trained

    run_id, model_id = logged["mdfr"]
    uri = {"run": run_id, "model": f"models:/{model_id}", "trial": str(trained_trials["mdfr"])}
    if form == "path":
        uri["path"] = tm.download(f"models:/{model_id}", store.uri, str(tmp_path))
    back = tm.load_model(uri[form], store.uri)
    reference = trained.load_trial(trained_trials["mdfr"])
    x = torch.rand(3, 3, 64, 64)  # another batch size than the export's example
    with torch.no_grad():
        torch.testing.assert_close(back.module(x), reference.module(x))
    assert back.views == ["input", "restored"] and back.info["kind"] == "mdfr"


def test_register_moves_the_alias_and_never_registers_a_model_twice(store, logged):
    _, first = logged["mdfr"]
    _, second = logged["finetune"]
    v1 = tm.register(store, first, "models-test", "champion", "first: val/acc = 0.5")
    assert tm.register(store, first, "models-test", "champion", "again") == v1
    v2 = tm.register(store, second, "models-test", "champion", "second")
    assert int(v2) == int(v1) + 1
    mv = store.client.get_model_version_by_alias("models-test", "champion")
    assert str(mv.version) == v2 and mv.source == f"models:/{second}"
    assert store.client.get_model_version("models-test", v1).description == "first: val/acc = 0.5"
    assert tm.load_model("models:/models-test@champion", store.uri).views == ["input"]


@pytest.mark.parametrize(
    ("uri", "error", "message"),
    [
        ("latest", UsageError, "not a model URI"),
        ("models:/no-such-model@champion", UsageError, "not found"),
        ("models:/models-test@no-such-alias", UsageError, "not found"),
        ("0123456789abcdef0123456789abcdef", UsageError, "no such run"),
    ],
)
def test_unknown_uris_are_usage_errors(store, logged, uri, error, message):
    with pytest.raises(error, match=message):
        tm.load_model(uri, store.uri)


def test_a_run_without_a_model_and_a_foreign_folder_are_named(store, exp, tmp_path):
    run_id, _ = store.child_run(exp, "p", "no-model")
    with pytest.raises(UsageError, match="has no logged model"):
        tm.load_model(run_id, store.uri)
    with pytest.raises(UsageError, match="neither an MLflow model folder"):
        tm.load_model(str(tmp_path), store.uri)


def test_a_broken_model_file_is_a_runtime_error(store, logged, tmp_path):
    _, model_id = logged["finetune"]
    path = tm.download(f"models:/{model_id}", store.uri, str(tmp_path))
    (next(tmp_path.rglob("model.pt2"))).write_bytes(b"not a pt2 archive")
    with pytest.raises(MdfrError, match="cannot load the network"):
        tm.load_model(path, store.uri)


def test_sweep_trial_table_appends_only_new_rows(store, exp):
    from mdfr.tracking.sweep_run import SUMMARY_TABLE, log_summary_table

    run_id, _ = store.child_run(exp, "p", "table-parent")
    rows = [{"trial_key": "a", "status": "ok", "val/acc": 0.5}, {"trial_key": "b",
            "status": "pruned", "val/acc": 0.25}]  # fmt: skip
    assert log_summary_table(store, run_id, rows) == 2
    assert log_summary_table(store, run_id, rows) == 0  # resume: nothing twice
    rows[1] = {"trial_key": "b", "status": "ok", "val/acc": 0.75}  # retried with success
    assert log_summary_table(store, run_id, rows) == 1
    from mdfr.tracking.store import process_uri

    with process_uri(store.uri):  # MLflow's load_table searches through the global URI
        table = store.client.load_table(exp, SUMMARY_TABLE, run_ids=[run_id])
    assert list(table["trial_key"]) == ["a", "b", "b"]
    assert list(table["status"]) == ["ok", "pruned", "ok"]


def test_report_files_land_under_report(store, exp, tmp_path):
    from mdfr.tracking.sweep_run import log_report

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(b"png")
    (tmp_path / "report.md").write_text("# v1")
    run_id, _ = store.child_run(exp, "p", "report-parent")
    paths = log_report(store, run_id, [tmp_path / "report.md", tmp_path / "figures"])
    assert paths == ["report/report.md", "report/figures"]
    (tmp_path / "report.md").write_text("# v2")
    log_report(store, run_id, [tmp_path / "report.md"])  # a new report replaces the old
    got = store.client.download_artifacts(run_id, "report", str(tmp_path / "dl"))
    assert (tmp_path / "dl" / "report" / "report.md").read_text() == "# v2"
    assert (tmp_path / "dl" / "report" / "figures" / "a.png").is_file(), got


def test_mdfr_train_names_its_config_as_source_and_logs_its_dataset(tiny_dataset, tmp_path):
    import yaml

    from mdfr.cli import main

    cfg = tmp_path / "pre.yaml"
    cfg.write_text(yaml.safe_dump({
        "mode": "pretrain", "output_dir": str(tmp_path / "out"),
        "data": {"dataset": str(tiny_dataset), "batch_size": 8, "limit_train": 16,
                 "limit_eval": 8},
        "model": {"backbone": "test_remnet"}, "train": {"epochs": 1, "device": "cpu"},
    }))  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["train", str(cfg), "--tracking-uri", uri, "--experiment", "by-hand"]) == 0
    store = Store(uri)
    (run,) = store.client.search_runs([store.ensure_experiment("by-hand")])
    assert run.data.tags["mlflow.source.name"] == str(cfg)
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {
        f"{tiny_dataset.name}/train",
        f"{tiny_dataset.name}/eval",
    }


def test_pretraining_stage_logs_its_cmi_network_with_log_models_all(store, exp, tiny_dataset,
                                                                    tmp_path):  # fmt: skip
    from fixtures_trained import tiny_trial_config

    from mdfr.engine import train_trial
    from mdfr.sweep import stages
    from mdfr.sweep.state import TrackingContext

    parent, _ = store.ensure_run(exp, {"mdfr.kind": "sweep", "mdfr.sweep_id": "pre"}, {}, "pre")
    flat = tiny_trial_config(tiny_dataset, tmp_path / "k1", mode="pretrain").to_flat_dict()
    tracking = TrackingContext(store.uri, exp, parent, "s", "c0ffee", "h", "jpeg:50",
                               log_models="all")  # fmt: skip
    done = stages.run_pretrain_stage(flat, str(tmp_path / "k1"), train_trial, tracking)
    (model,) = tm.logged_models_of(store, done["run_id"])
    assert model.name == "pretrain-k1" and model.tags["mdfr.kind"] == "pretrain"
    back = tm.load_model(done["run_id"], store.uri)
    assert back.views == ["input"] and back.info["kind"] == "pretrain"
