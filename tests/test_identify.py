"""``mdfr identify``: real images, a real trained model (a trial folder and the same network
logged to and registered in a real MLflow store), and its bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mdfr.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def registered(trained_trials, tmp_path_factory):
    """The mdfr trial logged as its run's model and registered as ``ident-test@champion``."""
    from mdfr import trained
    from mdfr.tracking import Store
    from mdfr.tracking import models as tm

    store = Store(f"sqlite:///{tmp_path_factory.mktemp('ident') / 'mlflow.db'}")
    exp = store.ensure_experiment("ident-test")
    run_id, _ = store.child_run(exp, "p", "t")
    model_id = tm.log_model(store, run_id, trained.load_trial(trained_trials["mdfr"]), "t")
    tm.register(store, model_id, "ident-test", "champion", "test")
    return {"uri": store.uri, "run_id": run_id}


def _identify(capsys, *argv):
    code = main(["identify", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_folder_prints_each_image_before_and_after_restoration(
    synth_images, trained_trials, capsys
):
    code, out, err = _identify(capsys, synth_images, "--model", trained_trials["mdfr"],
                               "--patches", 4)  # fmt: skip
    assert code == 0, err
    images = sorted(p for p in synth_images.rglob("*.jpg"))
    assert out.count(" patches; true: ") == len(images) == 36
    assert out.count("  before restoration: ") == out.count("  after restoration: ") == 36
    first = images[0].relative_to(synth_images).as_posix()
    assert f"{first} (4 patches; true: {images[0].parent.parent.parent.name[4:]})" in out
    assert "accuracy on 36 images with a known camera: before restoration" in out


def test_json_from_the_registered_champion_matches_the_trial_folder(
    synth_images, trained_trials, registered, capsys, tmp_path
):
    one = tmp_path / "one"
    one.mkdir()
    src = next(synth_images.rglob("*.jpg"))
    shutil.copy(src, one / src.name)
    docs = []
    for model in ("models:/ident-test@champion", registered["run_id"], trained_trials["mdfr"]):
        code, out, err = _identify(capsys, one, "--model", model, "--json",
                                   "--tracking-uri", registered["uri"], "--codec", "jpeg:30")  # fmt: skip
        assert code == 0, err
        docs.append(json.loads(out))
    doc = docs[0]
    assert doc["info"]["views"] == ["input", "restored"] and len(doc["classes"]) == 4
    (image,) = doc["images"]
    assert image["path"] == src.name and image["patches"] == 9 and image["truth"] is None
    for view in ("input", "restored"):
        probs = image["views"][view]["probabilities"]
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
        assert image["views"][view]["confidence"] == max(probs.values())
        assert image["views"][view]["model"] in doc["classes"]
    # the same network whichever way it is named: logged graph or rebuilt trial
    for other in docs[1:]:
        for view in ("input", "restored"):
            got = other["images"][0]["views"][view]["probabilities"]
            want = image["views"][view]["probabilities"]
            assert got == pytest.approx(want, abs=2e-4)


def test_a_classifier_model_prints_one_prediction(synth_images, trained_trials, capsys):
    image = next(synth_images.rglob("*.jpg"))
    code, out, _ = _identify(capsys, image, "--model", trained_trials["finetune"])
    assert code == 0 and "  prediction: " in out and "restoration" not in out


def _bad_images(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(folder / "a_good.png")
    (folder / "b_broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(folder / "c_small.png")
    return folder


def test_bad_images_exit_2_naming_the_file_unless_skipped(tmp_path, trained_trials, capsys):
    folder = _bad_images(tmp_path)
    model = trained_trials["mdfr"]
    code, out, err = _identify(capsys, folder, "--model", model)
    assert code == 2 and "Traceback" not in err
    assert f"{folder / 'b_broken.jpg'}: unreadable image" in err
    code, _, err = _identify(capsys, folder / "c_small.png", "--model", model)
    assert code == 2 and "c_small.png: image is 48x32, smaller than one 64x64 patch" in err
    code, out, err = _identify(capsys, folder, "--model", model, "--skip-bad", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [i["path"] for i in doc["images"]] == ["a_good.png", "b_broken.jpg", "c_small.png"]
    assert [bool(i.get("error")) for i in doc["images"]] == [False, True, True]


@pytest.mark.parametrize(
    ("target", "model", "expect"),
    [
        ("missing", "MODEL", "missing: no such file or folder"),
        ("EMPTY", "MODEL", "no images in this folder or below"),
        ("IMAGES", "latest", "not a model URI"),
        ("IMAGES", "models:/no-such@champion", "not found in sqlite:///"),
        ("IMAGES", "models:/ident-test@no-alias", "not found in sqlite:///"),
        ("IMAGES", "0123456789abcdef0123456789abcdef", "no such run"),
        ("IMAGES", "EMPTY", "neither an MLflow model folder"),
    ],
)
def test_bad_input_and_unknown_uris_exit_2(
    tmp_path, synth_images, trained_trials, registered, capsys, target, model, expect
):
    (tmp_path / "EMPTY").mkdir()
    names = {"EMPTY": tmp_path / "EMPTY", "IMAGES": synth_images, "MODEL": trained_trials["mdfr"]}
    argv = [names.get(target, tmp_path / target), "--model", names.get(model, model)]
    code, _, err = _identify(capsys, *argv, "--tracking-uri", registered["uri"])
    assert code == 2, err
    assert expect in err and "Traceback" not in err


def test_a_missing_store_is_not_created(tmp_path, synth_images, capsys):
    db = tmp_path / "none.db"
    code, _, err = _identify(capsys, synth_images, "--model", "models:/x@champion",
                             "--tracking-uri", f"sqlite:///{db}")  # fmt: skip
    assert code == 2 and f"no MLflow store at {db}" in err and not db.exists()


def test_a_broken_model_is_a_runtime_failure_exit_1(tmp_path, synth_images, registered):
    from mdfr.tracking import models as tm

    path = tm.download("models:/ident-test@champion", registered["uri"], str(tmp_path))
    next(tmp_path.rglob("model.pt2")).write_bytes(b"truncated")
    proc = subprocess.run(
        [sys.executable, "-m", "mdfr.cli", "identify", str(synth_images), "--model", path],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "cannot load the network" in proc.stderr and "Traceback" not in proc.stderr
