"""`birdcnn train --resume` refuses, in one line and touching nothing, a run whose data changed
since it started and a checkpoint that is not one of ours; `--seed` out of range and a --preset's
progressive resizing that the user's --epochs cannot hold are one-line errors too."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from birdcnn.cli import main
from birdcnn.errors import TrainingInterrupted
from birdcnn.modelfile import _sha256
from birdcnn.train import TrainConfig, train

CLASSES = ("bird", "cat", "dog")
PER_CLASS = 20


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (_sha256(p), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def one_line_error(err: str, *words: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("birdcnn train: error: "), err
    for w in words:
        assert w in err, (w, err)


@pytest.fixture(scope="module")
def small_data(cifar_small, tmp_path_factory) -> Path:
    """Real CIFAR-10 photos, 20 in each of three class folders."""
    root = tmp_path_factory.mktemp("resume_data") / "data"
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for p in sorted((cifar_small / "train" / c).iterdir())[:PER_CLASS]:
            shutil.copy2(p, root / c / p.name)
    return root


@pytest.fixture(scope="module")
def interrupted(small_data, tmp_path_factory) -> Path:
    """A run stopped by Ctrl-C after its first epoch (5 of 15 steps): a folder holding checkpoint.pt."""
    out = tmp_path_factory.mktemp("resume_runs") / "run"
    cfg = TrainConfig(data=str(small_data), arch="tiny", epochs=3, batch_size=10, val_size=10, device="cpu",
                      out=str(out))

    def ctrl_c(epoch, clf, seconds):
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C does: the run stops after this step, saving

    with pytest.raises(TrainingInterrupted):
        train(cfg, on_epoch=ctrl_c)
    assert (out / "checkpoint.pt").exists() and not (out / "model.json").exists()
    return out


@pytest.fixture
def run_and_data(interrupted, small_data, tmp_path) -> tuple[Path, Path]:
    """A copy of the interrupted run whose config names a copy of its data (free to change)."""
    data = tmp_path / "data"
    shutil.copytree(small_data, data)  # copy2: the same times, so the same fingerprint
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    ckpt["config"] = ckpt["config"].replace(str(small_data), str(data))
    torch.save(ckpt, out / "checkpoint.pt")
    return out, data


def resume(out: Path) -> list[str]:
    return ["train", "--out", str(out), "--resume", "--device", "cpu"]


# ---------------------------------------------------------------- the data changed since the run started

def test_resume_on_unchanged_data_goes_on(run_and_data, capsys):
    out, _ = run_and_data
    assert main(resume(out)) == 0
    assert f"resuming {out} at step 5/15" in capsys.readouterr().err
    assert (out / "model.json").exists()


def test_a_class_added_since_the_run_started_is_named(run_and_data, capsys):
    out, data = run_and_data
    shutil.copytree(data / "cat", data / "frog")
    before = snapshot(out)
    assert main(resume(out)) == 2
    one_line_error(capsys.readouterr().err.splitlines(keepends=True)[-1],
                   f"{out / 'checkpoint.pt'}: the data no longer matches what this run was started on",
                   "class added: frog", "another --out")
    assert snapshot(out) == before


def test_a_class_gone_and_a_changed_image_are_named(run_and_data, capsys):
    out, data = run_and_data
    shutil.rmtree(data / "dog")
    before = snapshot(out)
    assert main(resume(out)) == 2
    one_line_error(capsys.readouterr().err.splitlines(keepends=True)[-1], "class gone: dog", "training images now")
    assert snapshot(out) == before


def test_an_image_added_to_a_class_is_refused(run_and_data, capsys):
    out, data = run_and_data
    first = sorted((data / "cat").iterdir())[0]
    shutil.copy(first, data / "cat" / f"copy{first.suffix}")
    before = snapshot(out)
    assert main(resume(out)) == 2  # the epochs' orders and hard mining index the training images
    one_line_error(capsys.readouterr().err.splitlines(keepends=True)[-1],
                   "no longer matches", "training images now")
    assert snapshot(out) == before


def test_files_touched_since_the_run_started_are_a_note(run_and_data, capsys):
    """A copy of the folder on another machine has other file times, so another fingerprint: the
    same classes and images go on, with a note."""
    out, data = run_and_data
    for p in (data / "cat").iterdir():
        os.utime(p, (1e9, 1e9))
    assert main(resume(out)) == 0
    assert "note: the data's files changed since the run started" in capsys.readouterr().err


def test_an_older_checkpoint_without_its_classes_is_checked_by_its_last_layer(run_and_data, capsys):
    out, data = run_and_data
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    del ckpt["classes"], ckpt["data_fingerprint"]  # as birdcnn wrote checkpoints before it recorded them
    torch.save(ckpt, out / "checkpoint.pt")
    shutil.copytree(data / "cat", data / "frog")
    before = snapshot(out)
    assert main(resume(out)) == 2
    one_line_error(capsys.readouterr().err.splitlines(keepends=True)[-1],
                   "no longer matches", "4 classes now (bird, cat, dog, frog), 3 when it started")
    assert snapshot(out) == before


# ---------------------------------------------------------------- checkpoints that are not ours

def _with_config(ckpt: dict, **changes) -> dict:
    return {**ckpt, "config": json.dumps({**json.loads(ckpt["config"]), **changes})}


def _edit(ckpt: dict, how: str):
    if how == "no config":
        return {"model": ckpt["model"]}
    if how == "unknown key":
        return _with_config(ckpt, bogus=1)
    if how == "config an int":
        return {**ckpt, "config": 5}
    if how == "unknown arch":
        return _with_config(ckpt, arch="nope")
    if how == "a list":
        return [1, 2, 3]
    if how == "negative epochs":
        return _with_config(ckpt, epochs=-1)
    if how == "epochs text":
        return _with_config(ckpt, epochs="ten")
    if how == "wrong shape":
        return {**ckpt, "model": {**ckpt["model"], "0.weight": torch.zeros(3)}}
    if how == "bad augment":
        return _with_config(ckpt, augment={"bogus": 1})
    if how == "bad recipe":
        cfg = json.loads(ckpt["config"])
        return _with_config(ckpt, recipe={**cfg["recipe"], "momentum": "high"})
    if how == "not json":
        return {**ckpt, "history": "[{"}
    raise AssertionError(how)


@pytest.mark.parametrize("how, words", [
    ("no config", "it lacks 'optimizer', 'step', 'history', 'config', 'norm'"),
    ("unknown key", "unknown config key: 'bogus'"),
    ("config an int", "its 'config' is an int, not JSON text"),
    ("unknown arch", "unknown architecture 'nope'"),
    ("a list", "it holds a list"),
    ("negative epochs", "--epochs and --batch-size must be positive"),
    ("epochs text", "config 'epochs' is \"ten\""),
    ("wrong shape", "its weights do not fit the 'tiny' network: 0.weight is (3,) there"),
    ("not json", "its 'history' is not valid JSON"),
    ("bad augment", "its config's augment: "),
    ("bad recipe", "its config's recipe 'momentum' is \"high\", not a number"),
])
def test_a_hand_edited_checkpoint_is_one_line(how, words, interrupted, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    torch.save(_edit(ckpt, how), out / "checkpoint.pt")
    before = snapshot(out)
    assert main(resume(out)) == 2
    one_line_error(capsys.readouterr().err,
                   f"{out / 'checkpoint.pt'}: not a usable birdcnn checkpoint (", words)
    assert snapshot(out) == before


@pytest.mark.parametrize("content", [b"[1, 2, 3]\n", b"", b"PK\x03\x04 cut short"])
def test_a_checkpoint_that_torch_cannot_read_is_one_line(content, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(content)
    before = snapshot(out)
    assert main(resume(out)) == 2
    one_line_error(capsys.readouterr().err, f"{out / 'checkpoint.pt'}: not a usable birdcnn checkpoint (")
    assert snapshot(out) == before


# ---------------------------------------------------------------- --seed and --preset

@pytest.mark.parametrize("command", ["train", "augment-preview"])
@pytest.mark.parametrize("value", ["99999999999999999999", "-1", "4294967296"])
def test_a_seed_out_of_range_is_refused_by_the_parser(command, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, f"--seed={value}", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == (f"birdcnn {command}: error: argument --seed: must be an integer from 0 to 2**32-1 "
                   f"(4294967295), not {value}\n")
    assert not (tmp_path / "x").exists()


def test_the_largest_seed_is_taken():
    from birdcnn.argtypes import seed_int
    assert seed_int("4294967295") == 2**32 - 1 and seed_int("0") == 0


def test_progressive_resizing_set_by_a_preset_says_so(cifar_small, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(cifar_small), "--preset", "quick", "--epochs", "2", "--out", str(out)]) == 2
    one_line_error(capsys.readouterr().err,
                   "--start-size 24 (from --preset quick) must be 8 px to --input-size (32)",
                   "one --start-epochs 4 (from --preset quick) each", "together fewer than --epochs (2)",
                   "pass --start-size and --start-epochs that fit, or --epochs above 4")
    assert not out.exists()


def test_progressive_resizing_the_user_set_is_worded_as_before(cifar_small, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(cifar_small), "--epochs", "2", "--start-size", "24", "--start-epochs", "6",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    one_line_error(err, "--start-size must be 8 px", "one --start-epochs each", "together fewer than --epochs (2)")
    assert "preset" not in err


def test_under_torchrun_each_rank_says_it_in_one_line(cifar_small, tmp_path):
    """Every process stops with the one line, before joining the process group; torchrun itself
    then reports the failed processes (its own report, not a birdcnn traceback)."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        "-m", "birdcnn", "train", "--data", str(cifar_small), "--preset", "quick", "--epochs", "2",
                        "--device", "cpu", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    line = "birdcnn train: error: --start-size 24 (from --preset quick) must be 8 px"
    assert r.stderr.count(line) == 2, r.stderr[-3000:]
    assert "birdcnn/train.py" not in r.stderr and "BirdcnnError" not in r.stderr, r.stderr[-3000:]
    assert not out.exists()


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_never_unpickled(tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "PWNED"
    out.mkdir()
    torch.save({"model": _RunsACommand(marker), "step": 1}, out / "checkpoint.pt")
    assert main(resume(out)) == 2
    one_line_error(capsys.readouterr().err, f"{out / 'checkpoint.pt'}: not a usable birdcnn checkpoint (",
                   "birdcnn unpickles nothing else", "GLOBAL posix.system")
    assert not marker.exists()
