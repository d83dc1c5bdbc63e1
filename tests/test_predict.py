"""`birdcnn predict`: every image format, human and JSON output, the shipped model and samples,
and every kind of bad input (images and model files): one line naming the file, no traceback."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import birdcnn
from birdcnn.cli import main
from birdcnn.images import load_for_model
from birdcnn.modelfile import _sha256, default_model_path, load_model
from birdcnn.predict import sample_images


def predict(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def predict_json(capsys, *args: str) -> tuple[int, list[dict], str]:
    code, out, err = predict(capsys, *args, "--json")
    return code, json.loads(out), err


def check_record(rec: dict, clf) -> None:
    assert 0.0 <= rec["bird_probability"] <= 1.0
    assert rec["is_bird"] == (rec["bird_probability"] >= clf.threshold)
    assert rec["label"] == ("bird" if rec["is_bird"] else "not bird")


# ---------------------------------------------------------------- every format

def test_every_format_is_classified(capsys, tiny_model, image_formats):
    clf = load_model(tiny_model)
    paths = [image_formats[name][0] for name in sorted(image_formats)]
    code, records, err = predict_json(capsys, *paths, "--model", tiny_model)
    assert code == 0 and err == ""
    assert [r["path"] for r in records] == [str(p) for p in paths]
    for rec, path in zip(records, paths):
        check_record(rec, clf)
        # The same numbers as the Python API on the model's view of the file.
        expected = clf.probabilities(load_for_model(path, clf.input_size)[None])[0]
        assert rec["bird_probability"] == pytest.approx(expected[clf.positive_index], abs=1e-5)
        # Multi-class model: the top three classes, most likely first.
        top = rec["top_classes"]
        assert len(top) == 3 and {t["class"] for t in top} <= set(clf.classes)
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
        assert top[0]["probability"] == pytest.approx(float(expected.max()), abs=1e-5)
    by_name = {Path(r["path"]).name: r["bird_probability"] for r in records}
    # Lossless encodings of the same pixels give the same answer.
    for name in ("photo.bmp", "photo.tiff", "lossless.webp", "rgba.png"):
        assert by_name[name] == pytest.approx(by_name["photo.png"], abs=1e-6), name
    assert by_name["gray16.png"] == pytest.approx(by_name["gray.png"], abs=1e-6)


def test_exif_orientation_is_honoured_by_predict(capsys, tiny_model, image_formats, photo, tmp_path):
    # A copy rotated in its pixels (no EXIF tag) must get the answer of the EXIF-tagged file.
    photo.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "rotated.jpg", quality=95)
    photo.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "wrong_way.jpg", quality=95)
    code, (tagged, rotated), _ = predict_json(capsys, image_formats["exif6.jpg"][0], tmp_path / "rotated.jpg",
                                              "--model", tiny_model)
    assert code == 0
    a, b = ({t["class"]: t["probability"] for t in r["top_classes"]} for r in (tagged, rotated))
    assert tagged["top_classes"][0]["class"] == rotated["top_classes"][0]["class"]
    assert all(a[c] == pytest.approx(b[c], abs=0.02) for c in a.keys() & b.keys())
    assert tagged["bird_probability"] == pytest.approx(rotated["bird_probability"], abs=0.02)
    # ... and the model's input really differs between the two orientations.
    exif_in = load_for_model(image_formats["exif6.jpg"][0], 32).astype(float)
    assert np.abs(exif_in - load_for_model(tmp_path / "rotated.jpg", 32)).mean() < 3
    assert np.abs(exif_in - load_for_model(tmp_path / "wrong_way.jpg", 32)).mean() > 10


def test_real_photos_and_folders(capsys, tiny_model, photos):
    code, records, _ = predict_json(capsys, photos / "bird", photos / "not_bird" / "barn.jpg", "--model", tiny_model)
    assert code == 0 and len(records) == 11  # a folder contributes the images inside it
    assert records[0]["path"] == str(sorted((photos / "bird").iterdir())[0])


def test_human_output_is_one_line_per_photo(capsys, tiny_model, image_formats):
    paths = [image_formats[n][0] for n in ("photo.jpg", "photo.png", "cmyk.jpg")]
    code, out, err = predict(capsys, *paths, "--model", tiny_model)
    lines = out.splitlines()
    assert code == 0 and err == "" and len(lines) == 3
    for line, path in zip(lines, paths):
        assert line.startswith(f"{path}: ")
        assert re.fullmatch(r".*: (bird \(\d+\.\d%\)|not bird \(\d+\.\d% bird\)"
                            r"(  most like \w+ \(\d+\.\d%\))?)", line), line


def test_binary_model_json_has_no_top_classes(capsys, article_model, image_formats):
    clf = load_model(article_model)
    assert clf.classes == ["not_bird", "bird"]
    code, records, _ = predict_json(capsys, image_formats["photo.jpg"][0], "--model", article_model)
    assert code == 0 and len(records) == 1
    assert set(records[0]) == {"path", "label", "bird_probability", "is_bird"}
    check_record(records[0], clf)


def test_samples_with_a_given_model(capsys, tiny_model):
    samples = sample_images()
    assert len(samples) == 12
    code, records, _ = predict_json(capsys, "--samples", "--model", tiny_model)
    assert code == 0 and [r["path"] for r in records] == [str(p) for p in samples]
    assert all("label" in r and "error" not in r for r in records)
    # --model also takes the run folder or the .safetensors file: the same model, the same answers.
    for other in (tiny_model.parent, tiny_model.with_suffix(".safetensors")):
        code, again, _ = predict_json(capsys, "--samples", "--model", other)
        assert code == 0 and again == records


def test_samples_with_the_shipped_model(capsys):
    # The main job of the README: no --model, the model shipped inside the package.
    assert default_model_path().is_file(), "the package must ship assets/model/default.json"
    clf = load_model()
    code, records, err = predict_json(capsys, "--samples")
    assert code == 0 and len(records) == 12
    for r in records:
        check_record(r, clf)
    birds = [r["bird_probability"] for r in records if Path(r["path"]).name.startswith("bird-")]
    others = [r["bird_probability"] for r in records if not Path(r["path"]).name.startswith("bird-")]
    assert len(birds) >= 3 and len(others) >= 3
    assert np.mean(birds) > np.mean(others)  # the shipped model tells birds from the rest
    code, out, _ = predict(capsys, "--samples")
    assert code == 0 and len(out.splitlines()) == 12


def test_python_api_keeps_order_and_reports_errors(tiny_model, image_formats, bad_images):
    clf = birdcnn.load_model(tiny_model)
    paths = [image_formats["photo.png"][0], bad_images["empty.jpg"][0], image_formats["gray.jpg"][0]]
    records = birdcnn.classify(paths, clf)
    assert [r["path"] for r in records] == [str(p) for p in paths]
    assert "label" in records[0] and "label" in records[2]
    assert records[1] == {"path": str(paths[1]), "error": "empty file"}


# ---------------------------------------------------------------- bad images

def test_bad_images_are_reported_and_good_ones_still_classified(capsys, tiny_model, image_formats, bad_images):
    good = [image_formats["photo.jpg"][0], image_formats["photo.png"][0]]
    names = sorted(set(bad_images) - {"a_folder.jpg"})  # a folder argument is expanded, not an image
    bad = [bad_images[name][0] for name in names]
    mixed = [good[0], *bad, good[1]]
    code, out, err = predict(capsys, *mixed, "--model", tiny_model)
    assert code == 1
    assert [line.split(": ")[0] for line in out.splitlines()] == [str(p) for p in good]
    err_lines = err.splitlines()
    assert len(err_lines) == len(bad)
    for line, name in zip(err_lines, names):
        path, words = bad_images[name]
        assert line.startswith(f"birdcnn predict: error: {path}: ") and words in line, line
    # JSON: one record per input, in order; bad ones carry the error instead of a label.
    code, records, err = predict_json(capsys, *mixed, "--model", tiny_model)
    assert code == 1 and len(records) == len(mixed) and len(err.splitlines()) == len(bad)
    assert "label" in records[0] and "label" in records[-1]
    for rec, name in zip(records[1:-1], names):
        assert set(rec) == {"path", "error"} and bad_images[name][1] in rec["error"]


def test_only_bad_images_exit_1(capsys, tiny_model, bad_images):
    code, out, err = predict(capsys, bad_images["text.jpg"][0], "--model", tiny_model)
    assert code == 1 and out == ""
    assert err.strip() == f"birdcnn predict: error: {bad_images['text.jpg'][0]}: not an image (unrecognised format)"


def test_usage_errors_exit_2(capsys, tiny_model, tmp_path):
    (tmp_path / "empty").mkdir()
    # A folder without images is that item's failure (exit 1), like a bad file: see test_bad_input.py.
    code, _, err = predict(capsys, tmp_path / "empty", "--model", tiny_model)
    assert code == 1 and err.count("\n") == 1 and str(tmp_path / "empty") in err and "no images" in err
    code, _, err = predict(capsys, "--model", tiny_model)
    assert code == 2 and "no images given" in err


# ---------------------------------------------------------------- bad model files

def copy_model(src: Path, dest: Path, weights: Path | None = None, **meta_changes) -> Path:
    """A copy of a model (optionally with other weights), its metadata changed and its sha matching
    the weights, unless 'weights_sha256' is among the changes."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(weights or src.with_suffix(".safetensors"), dest / "model.safetensors")
    meta = json.loads(src.read_text())
    meta["weights_sha256"] = _sha256(dest / "model.safetensors")
    meta.update(meta_changes)
    (dest / "model.json").write_text(json.dumps(meta))
    return dest / "model.json"


def bad_models(tiny_model: Path, article_model: Path, tmp: Path) -> dict[str, tuple[Path, Path, str]]:
    """name -> (--model argument, file the error must name, words it must contain)."""
    out = {}
    out["missing"] = (tmp / "nope" / "model.json",) * 2 + ("not found",)
    (tmp / "random.json").write_text(json.dumps({"weights": [1, 2, 3], "name": "someone else's"}))
    out["random json"] = (tmp / "random.json", tmp / "random.json", "not a birdcnn model file")
    (tmp / "garbage.json").write_bytes(np.random.default_rng(0).bytes(300))
    out["garbage json"] = (tmp / "garbage.json", tmp / "garbage.json", "not a birdcnn model file")
    (tmp / "alone.safetensors").write_bytes(np.random.default_rng(1).bytes(5000))
    out["random safetensors alone"] = (tmp / "alone.safetensors", tmp / "alone.json", "metadata not found")
    (tmp / "random.safetensors").write_bytes(np.random.default_rng(2).bytes(5000))
    m = copy_model(tiny_model, tmp / "random_weights", weights=tmp / "random.safetensors")
    out["random bytes as weights"] = (m, m.with_suffix(".safetensors"), "not a valid safetensors file")
    m = copy_model(tiny_model, tmp / "tampered")
    weights = bytearray(m.with_suffix(".safetensors").read_bytes())
    weights[-10] ^= 0xFF  # one flipped bit pattern inside a tensor
    m.with_suffix(".safetensors").write_bytes(bytes(weights))
    out["tampered weights"] = (m, m.with_suffix(".safetensors"), "sha256 differs")
    m = copy_model(tiny_model, tmp / "other_arch", weights=article_model.with_suffix(".safetensors"))
    out["weights of another architecture"] = (m, m.with_suffix(".safetensors"), "do not fit architecture 'tiny'")
    m = copy_model(tiny_model, tmp / "fast_meta", arch="fast")
    out["metadata says another architecture"] = (m, m.with_suffix(".safetensors"), "do not fit architecture 'fast'")
    m = copy_model(tiny_model, tmp / "bad_positive", positive="eagle")
    out["positive class not in classes"] = (m, m, "'eagle' is not among the model's classes")
    m = copy_model(tiny_model, tmp / "no_weights")
    m.with_suffix(".safetensors").unlink()
    out["weights missing"] = (m, m.with_suffix(".safetensors"), "weights file not found")
    m = copy_model(tiny_model, tmp / "newer", format_version=99)
    out["newer format"] = (m, m, "newer birdcnn")
    m = copy_model(tiny_model, tmp / "bad_tta", tta="rotate-everything")
    out["unknown test-time augmentation"] = (m, m, "unknown test-time augmentation 'rotate-everything'")
    return out


BAD_MODELS = ["missing", "random json", "garbage json", "random safetensors alone", "random bytes as weights",
              "tampered weights", "weights of another architecture", "metadata says another architecture",
              "positive class not in classes", "weights missing", "newer format", "unknown test-time augmentation"]


@pytest.fixture(scope="module")
def broken_models(tiny_model, article_model, tmp_path_factory):
    return bad_models(tiny_model, article_model, tmp_path_factory.mktemp("bad_models"))


@pytest.mark.parametrize("name", BAD_MODELS)
def test_bad_model_files_are_refused_with_one_line(capsys, broken_models, image_formats, name):
    arg, named, words = broken_models[name]
    code, out, err = predict(capsys, image_formats["photo.jpg"][0], "--model", arg)
    assert code == 2 and out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"birdcnn predict: error: {named}: ") and words in err, err


# ---------------------------------------------------------------- the real command line

def test_console_exit_code_and_no_traceback(tiny_model, image_formats, bad_images):
    # The installed command (not just main()): exit status 1, good photo classified, no traceback.
    args = ["predict", image_formats["photo.webp"][0], bad_images["truncated.jpg"][0], bad_images["bomb.png"][0],
            "--model", tiny_model]
    r = subprocess.run([sys.executable, "-m", "birdcnn", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert r.stdout.startswith(f"{image_formats['photo.webp'][0]}: ") and len(r.stdout.splitlines()) == 1
    assert len(r.stderr.splitlines()) == 2 and "Traceback" not in r.stderr


def test_a_folder_is_answered_batch_by_batch(tiny_model, photos, tmp_path):
    """Thousands of photos are answered as they go: a batch's records come before the next batch
    is read (here the third photo, removed after the first answer, is found missing)."""
    files = [Path(shutil.copy(photos / name, tmp_path / f"{i}.jpg"))
             for i, name in enumerate(["bird/cock.jpg", "bird/crane.jpg", "not_bird/barn.jpg"])]
    found = birdcnn.iter_classify(files, load_model(tiny_model), batch_size=2)
    assert "label" in next(found)
    files[2].unlink()
    rest = list(found)
    assert "label" in rest[0] and rest[1] == {"path": str(files[2]), "error": "no such file"}
    # The list API gives the same records.
    assert birdcnn.classify(files[:2], load_model(tiny_model))[1]["label"] == rest[0]["label"]
