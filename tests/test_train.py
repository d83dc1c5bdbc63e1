"""`birdcnn train`: a short real run that learns, its results folder, kill -9 / Ctrl-C and --resume,
and the refusals that protect existing runs."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from birdcnn.cli import main
from birdcnn.data import CIFAR10_CLASSES, load_split
from birdcnn.devices import fast_bf16
from birdcnn.images import load_for_model
from birdcnn.modelfile import _sha256, load_model
from birdcnn.models import build, head_name

# 500 training images (100 of the 600 held out for validation), batches of 50: 10 steps an epoch.
# On the CPU, so that runs are bit-for-bit reproducible (GPU convolutions need not be).
EPOCHS, STEPS_PER_EPOCH = 6, 10


def train_args(data: Path, out: Path) -> list[str]:
    return ["train", "--data", str(data), "--arch", "tiny", "--epochs", str(EPOCHS), "--batch-size", "50",
            "--val-size", "100", "--device", "cpu", "--out", str(out)]


@pytest.fixture(scope="module")
def run(cifar_small, tmp_path_factory) -> Path:
    """An uninterrupted run through the command line, as a user would start it."""
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(train_args(cifar_small, out)) == 0
    return out


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (_sha256(p), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------- a run that learns

def test_training_learns(run, cifar_small):
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.05  # the loss falls
    # Accuracy on held-back images (never used for training or validation): chance is 10%.
    clf = load_model(run)
    test = load_split(cifar_small, "test")
    accuracy = float((clf.probabilities(test.images).argmax(1) == test.labels).mean())
    assert accuracy > 0.17, accuracy
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 200
    assert metrics["test"]["accuracy"] == pytest.approx(accuracy, abs=0.011)


def test_run_folder_contents(run, cifar_small):
    names = {p.name for p in run.iterdir()}
    assert {"model.safetensors", "model.json", "metrics.json", "history.json", "training_curves.png",
            "checkpoint.pt"} <= names
    assert not [n for n in names if "tmp" in n]  # temporary files were renamed into place
    meta = json.loads((run / "model.json").read_text())
    assert meta["format"] == "birdcnn-model" and meta["arch"] == "tiny"
    assert meta["classes"] == sorted(CIFAR10_CLASSES) and meta["positive"] == "bird"
    assert len(meta["mean"]) == len(meta["std"]) == 3 and all(0 < s < 1 for s in meta["std"])
    assert 0 < meta["threshold"] < 1 and meta["temperature"] > 0 and meta["input_size"] == 32
    assert meta["weights_sha256"] == _sha256(run / "model.safetensors")
    # The weights are as readable as the other files (safetensors' save_file would make them 0600).
    assert stat.S_IMODE((run / "model.safetensors").stat().st_mode) == stat.S_IMODE((run / "model.json").stat().st_mode)
    training = meta["training"]
    assert training["command"].startswith(f"birdcnn train --data {cifar_small} --arch tiny")
    assert training["data_fingerprint"] == load_split(cifar_small, "train").fingerprint
    assert training["epochs_run"] == EPOCHS and training["config"]["seed"] == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert meta["metrics"] == metrics
    for split in ("validation", "test"):
        bird = metrics[split]["bird"]
        assert {"precision", "recall", "average_precision", "tp", "fp", "fn", "tn"} <= set(bird)
    with Image.open(run / "training_curves.png") as im:
        assert im.format == "PNG" and im.width >= 600 and im.height >= 300
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # something is drawn on it
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == EPOCHS * STEPS_PER_EPOCH


# ---------------------------------------------------------------- kill -9, Ctrl-C and --resume

def start_training(cifar_small: Path, out: Path, log: Path) -> subprocess.Popen:
    """Start `birdcnn train` in its own process and wait until its first epoch's checkpoint exists."""
    with open(log, "w") as f:
        # As many threads as this process uses: the same arithmetic as the uninterrupted run.
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        proc = subprocess.Popen([sys.executable, "-m", "birdcnn", *train_args(cifar_small, out)],
                                stdout=f, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training ended or stalled before its first checkpoint:\n{log.read_text()}")
        time.sleep(0.02)
    return proc


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_kill_9_then_resume(run, cifar_small, tmp_path, capsys):
    out = tmp_path / "killed"
    proc = start_training(cifar_small, out, tmp_path / "log.txt")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "model.json").exists(), "the run finished before it could be killed"
    step = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["step"]
    assert STEPS_PER_EPOCH <= step < EPOCHS * STEPS_PER_EPOCH
    assert main(["train", "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"resuming {out} at step {step}/{EPOCHS * STEPS_PER_EPOCH}" in err
    # the precision it trains in, by the same rule as inference (tests/test_devices.py)
    assert ("device: cpu, bf16 autocast" if fast_bf16(torch.device("cpu")) else
            "device: cpu, float32 (this processor has no native bf16)") in err
    clf = load_model(out)  # a loadable, working model
    assert clf.probabilities(load_split(cifar_small, "test").images[:5]).shape == (5, 10)
    assert len(json.loads((out / "history.json").read_text())) == EPOCHS
    command = json.loads((out / "model.json").read_text())["training"]["command"]
    assert command.startswith(f"birdcnn train --data {cifar_small}")
    assert command.endswith(f"continued with: birdcnn train --out {out} --resume")
    # Seeded and resumable exactly: the same weights as the run that was never interrupted.
    assert_same_weights(out, run)


def test_ctrl_c_stops_cleanly_with_a_resumable_checkpoint(run, cifar_small, tmp_path, capsys):
    out = tmp_path / "interrupted"
    log = tmp_path / "log.txt"
    proc = start_training(cifar_small, out, log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    text = log.read_text()
    assert "Traceback" not in text
    assert f"birdcnn train --out {out} --resume" in text  # it says how to continue
    assert not (out / "model.json").exists()
    assert not [p for p in out.iterdir() if "tmp" in p.name]
    step = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["step"]
    assert 0 < step < EPOCHS * STEPS_PER_EPOCH
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert_same_weights(out, run)


def test_binary_extra_positive_balanced(cifar_small, photos, tmp_path):
    out = tmp_path / "binary"
    code = main(["train", "--data", str(cifar_small), "--arch", "tiny", "--classes", "binary",
                 "--extra-positive", str(photos / "bird"), "--balance", "--epochs", "1", "--batch-size", "100",
                 "--val-size", "100", "--rotate", "10", "--blur", "1", "--out", str(out)])
    assert code == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == ["not_bird", "bird"] and meta["positive"] == "bird"
    assert "+extra:" in meta["training"]["data_fingerprint"]
    config = meta["training"]["config"]
    assert config["balance"] and config["extra_positive"] == str(photos / "bird")
    assert config["augment"]["rotate"] == 10 and config["augment"]["blur"] == 1
    # Balanced sampling: the network saw birds about half the time, so it predicts them often
    # (an unbalanced 1-epoch run predicts "not bird" for nearly everything).
    test = load_split(cifar_small, "test")
    share = load_model(out).probabilities(test.images)[:, 1].mean()
    assert share > 0.3


# ---------------------------------------------------------------- refusals

def test_existing_run_is_not_overwritten(run, cifar_small, capsys):
    before = snapshot(run)
    assert main(train_args(cifar_small, run)) == 2
    err = capsys.readouterr().err
    assert err == (f"birdcnn train: error: {run}: already holds a run; "
                   "pass --resume to continue it, or choose another --out\n")
    assert snapshot(run) == before


def test_resuming_a_finished_run_is_refused(run, capsys):
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already finished" in err and str(run) in err
    assert snapshot(run) == before


class RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("case", ["absent", "no out", "no data", "garbage checkpoint", "malicious checkpoint",
                                  "missing data", "empty data", "unknown positive", "binary negative balance"])
def test_bad_train_requests_are_one_line_errors(case, cifar_small, tmp_path, capsys):
    out = tmp_path / "run"
    marker = tmp_path / "PWNED"
    if case in ("garbage checkpoint", "malicious checkpoint"):
        out.mkdir()
        if case == "garbage checkpoint":
            (out / "checkpoint.pt").write_bytes(b"\x00garbage" * 100)
        else:
            torch.save({"model": RunsACommand(marker), "step": 1}, out / "checkpoint.pt")
    (tmp_path / "empty").mkdir()
    args, words = {
        "absent": (["--out", str(out), "--resume"], f"{out}: no checkpoint.pt to resume from"),
        "no out": (["--resume"], "--resume needs --out"),
        "no data": (["--out", str(out)], "--data is required"),
        "garbage checkpoint": (["--out", str(out), "--resume"], "not a usable birdcnn checkpoint"),
        "malicious checkpoint": (["--out", str(out), "--resume"], "not a usable birdcnn checkpoint"),
        "missing data": (["--data", str(tmp_path / "nope"), "--out", str(out)], "nope: no such file or folder"),
        "empty data": (["--data", str(tmp_path / "empty"), "--out", str(out)], "empty: no images found"),
        "unknown positive": (["--data", str(cifar_small), "--positive", "eagle", "--out", str(out)],
                             "positive class 'eagle' is not among"),
        "binary negative balance": (["--data", str(cifar_small), "--classes", "binary", "--balance-negatives",
                                     "--out", str(out)], "--balance-negatives needs --classes all"),
    }[case]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("birdcnn train: error: ") and err.count("\n") == 1 and words in err, err
    assert not marker.exists()  # the checkpoint was not unpickled
    assert not (out / "model.json").exists()


def test_lookahead_pulls_weights_and_batchnorm_statistics_towards_their_average():
    from birdcnn.models import build
    from birdcnn.train import Lookahead

    torch.manual_seed(0)
    net = build("tiny", 10)
    la = Lookahead(net)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for v in net.state_dict().values():
            if v.is_floating_point():
                v.add_(1.0)
    la.update(net, decay=0.75)  # average = 0.75 * start + 0.25 * (start + 1), copied into the net
    now = net.state_dict()
    for k, v in start.items():
        if v.is_floating_point():
            assert torch.allclose(now[k], v + 0.25), k
            assert torch.allclose(la.avg[k], now[k]), k
        else:
            assert torch.equal(now[k], v), k  # integer counters are left alone
    assert any("running_mean" in k for k in la.avg)


def test_learning_rate_schedule_warms_up_then_decays():
    from birdcnn.train import lr_factor

    total = 100
    f = [lr_factor(s, total, "sgd") for s in range(total + 1)]
    assert f[0] == pytest.approx(0.2) and max(f) == pytest.approx(1.0) and f[total] == pytest.approx(0.07)
    assert f.index(max(f)) == 23  # the peak after 23% of the steps
    assert all(a < b for a, b in zip(f[:23], f[1:24])) and all(a > b for a, b in zip(f[23:], f[24:]))
    assert {lr_factor(s, total, "adam") for s in range(total)} == {1.0}  # the article's Adam: constant


def test_optimizer_groups_follow_the_network_roles():
    """FastNet's BatchNorm shifts learn at bias_scaler x the rate, its whitening bias only for the first
    epochs, its frozen whitening filters not at all; every trainable parameter is in exactly one group."""
    from birdcnn.models import WHITENING_BIAS_EPOCHS, build
    from birdcnn.train import TrainConfig, make_optimizer, set_learning_rates

    cfg = TrainConfig(data="unused").resolved()
    net = build("fast", 10)
    opt = make_optimizer(net, cfg)
    grouped = [p for g in opt.param_groups for p in g["params"]]
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    assert all(p is not net[0].weight for p in grouped)
    norm, bias, rest, head = opt.param_groups  # SGD: the filters and the last layer at one rate
    assert head["params"] == [net[-2].weight] and head["initial_lr"] == rest["initial_lr"]
    assert norm["initial_lr"] == pytest.approx(rest["initial_lr"] * cfg.recipe["bias_scaler"])
    assert bias["params"] == [net[0].bias] and bias["until_epoch"] == WHITENING_BIAS_EPOCHS
    set_learning_rates(opt, 50, 100, WHITENING_BIAS_EPOCHS - 1, "sgd")
    assert bias["lr"] == pytest.approx(rest["lr"]) and rest["lr"] > 0
    set_learning_rates(opt, 50, 100, WHITENING_BIAS_EPOCHS, "sgd")
    assert bias["lr"] == 0.0 and rest["lr"] > 0
    # With lr 0 the bias stays put through a real SGD step (momentum and weight decay included).
    before = net[0].bias.detach().clone()
    net(torch.randn(8, 3, 32, 32)).sum().backward()
    opt.step()
    assert torch.equal(net[0].bias.detach(), before)


# ---------------------------------------------------------------- input size and progressive resizing

def test_progressive_resizing_trains_small_first_then_at_the_models_view(cifar_small, photos, tmp_path):
    """--start-size 20 24 --start-epochs 1 1 --input-size 40: epoch 1's batches are 20 px, epoch 2's
    24 px (thumbnails resized, photos cut to size), epoch 3's 40 px, and the model file's view is 40 px."""
    from birdcnn.train import Inputs, TrainConfig, data_norm, prepare_data, train

    cfg = TrainConfig(data=[str(cifar_small), str(photos)], arch="tiny", epochs=3, batch_size=100, val_size=8,
                      input_size=40, start_size=[20, 24], start_epochs=[1, 1], device="cpu", out=str(tmp_path / "run"))
    resolved = cfg.resolved()
    assert [resolved.size_at(e) for e in range(3)] == [20, 24, 40]
    one = TrainConfig(data="x", epochs=9, start_size=[24], start_epochs=[4]).resolved()
    assert (one.start_size, one.start_epochs) == (24, 4) and [one.size_at(e) for e in (3, 4)] == [24, 32]
    mixed = prepare_data(resolved)
    assert mixed.val.images.shape[1:] == (40, 40, 3) and mixed.train.images.shape[1:] == (80, 80, 3)
    inputs = Inputs(mixed, resolved, torch.device("cpu"), data_norm(mixed.val.images))
    both = torch.cat([torch.nonzero(torch.from_numpy(mixed.train_source == k))[:3, 0] for k in (0, 1)])
    for epoch, size in ((0, 20), (1, 24), (2, 40)):
        x, y = inputs.batch(both, epoch, resolved.size_at(epoch))
        assert x.shape == (6, 3, size, size) and torch.isfinite(x).all() and len(y) == 6

    run = train(cfg)
    clf = load_model(run)
    assert clf.input_size == 40 and json.loads((run / "model.json").read_text())["input_size"] == 40
    probs = clf.probabilities(load_for_model(photos / "bird" / "magpie.jpg", clf.input_size)[None])
    assert probs.shape == (1, len(clf.classes)) and np.isfinite(probs).all()


@pytest.mark.parametrize("args, words", [
    (["--input-size", "32", "--start-size", "40", "--start-epochs", "1"], "--start-size must be 8 px to --input-size"),
    (["--start-size", "24", "--start-epochs", "6"], "together fewer than --epochs"),
    (["--start-size", "28", "24", "--start-epochs", "0.5", "0.5"], "smallest first"),
    (["--start-size", "24", "28", "--start-epochs", "1"], "one --start-epochs each"),
    (["--start-size", "24"], "one --start-epochs each"),
    (["--arch", "article", "--start-size", "24", "--start-epochs", "1"], "not --arch article"),
    (["--input-size", "4"], "--input-size must be 8 to 256 px"),
    (["--arch", "tiny", "--widths", "8", "16", "16"], "--widths takes three positive channel counts, for --arch fast"),
    (["--arch", "tiny", "--stem-stride", "2"], "--stem-stride is 1 or 2, for --arch fast"),
    (["--input-size", "8"], "the fast network at --stem-stride 1 needs images of at least 9 px"),
    (["--input-size", "32", "--stem-stride", "2", "--start-size", "12", "--start-epochs", "1"],
     "the fast network at --stem-stride 2 needs images of at least 16 px"),
])
def test_impossible_sizes_are_one_line_errors(args, words, cifar_small, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(cifar_small), "--epochs", "2", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not out.exists()


def test_widths_shape_the_network_and_travel_in_the_model_file(cifar_small, tmp_path):
    """--widths 8 16 24: the fast network's three groups have those widths, the model file
    records them, and loading it rebuilds the same network (the weights fit)."""
    out = tmp_path / "run"
    assert main(["train", "--data", str(cifar_small), "--widths", "8", "16", "24", "--epochs", "1",
                 "--batch-size", "100", "--val-size", "100", "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads((out / "model.json").read_text())["arch_kwargs"] == {"widths": [8, 16, 24]}
    clf = load_model(out)
    convs = [m for m in clf.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs][1:] == [8, 8, 16, 16, 24, 24]
    probs = clf.probabilities(load_split(cifar_small, "test").images[:4])
    assert probs.shape == (4, 10) and np.allclose(probs.sum(1), 1, atol=1e-4)


def test_stem_stride_2_sees_a_larger_view_at_the_same_feature_size(cifar_small, tmp_path):
    """--input-size 32 --stem-stride 2: the first layer moves by 2 pixels, so the groups see 16x16
    maps, as a 16-px view at stride 1 gives them; the model file records the stride and rebuilds it."""
    out = tmp_path / "run"
    assert main(["train", "--data", str(cifar_small), "--widths", "8", "16", "16", "--input-size", "32",
                 "--stem-stride", "2", "--epochs", "1", "--batch-size", "100", "--val-size", "100",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads((out / "model.json").read_text())["arch_kwargs"] == {"widths": [8, 16, 16], "stem_stride": 2}
    clf = load_model(out)
    assert clf.input_size == 32 and clf.net[0].stride == (2, 2)
    def stem(net: torch.nn.Module, size: int) -> tuple[int, int]:
        return tuple(torch.nn.Sequential(*list(net)[:2])(torch.zeros(1, 3, size, size)).shape[-2:])

    assert stem(clf.net.cpu(), 32) == stem(build("fast", 10, widths=(8, 16, 16)), 17) == (16, 16)
    probs = clf.probabilities(load_split(cifar_small, "test").images[:4])
    assert probs.shape == (4, 10) and np.allclose(probs.sum(1), 1, atol=1e-4)


def test_lookahead_is_the_recipes_unless_asked_for():
    from birdcnn.errors import BirdcnnError
    from birdcnn.train import LOOKAHEAD, TrainConfig

    assert TrainConfig(data="x").resolved().recipe["lookahead"] == LOOKAHEAD  # airbench's SGD recipe: on
    assert TrainConfig(data="x", lookahead=False).resolved().recipe["lookahead"] is None
    assert TrainConfig(data="x", optimizer="muon").resolved().recipe["lookahead"] is None  # Muon's: off
    assert TrainConfig(data="x", preset="quick", lookahead=True).resolved().recipe["lookahead"] == LOOKAHEAD
    with pytest.raises(BirdcnnError, match="--lookahead is for"):
        TrainConfig(data="x", arch="article", lookahead=True).resolved()
    assert TrainConfig(data="x", arch="article", lookahead=False).resolved().recipe["lookahead"] is None


def test_a_preset_fills_only_the_fields_left_unset():
    from birdcnn.errors import BirdcnnError
    from birdcnn.train import PRESETS, TrainConfig

    quick = PRESETS["quick"]
    cfg = TrainConfig(data="x", preset="quick").resolved()
    fields = ("epochs", "batch_size", "start_size", "start_epochs", "val_size", "optimizer", "lr")
    assert {k: getattr(cfg, k) for k in fields} == {k: quick[k] for k in fields}
    assert cfg.label_smoothing == TrainConfig(data="x").resolved().label_smoothing  # the rest is the arch's recipe
    assert cfg.recipe["optimizer"] == "muon" and cfg.recipe["lookahead"] is None
    sgd = TrainConfig(data="x", preset="quick", optimizer="sgd").resolved()  # the preset's lr is Muon's: dropped
    assert sgd.recipe["lookahead"] is not None and sgd.lr == TrainConfig(data="x").resolved().lr
    assert TrainConfig(data="x", preset="quick", epochs=3.0, start_epochs=1.0).resolved().epochs == 3.0
    with pytest.raises(BirdcnnError, match="unknown --preset"):
        TrainConfig(data="x", preset="slow").resolved()
    with pytest.raises(BirdcnnError, match="a recipe for --arch fast"):
        TrainConfig(data="x", arch="tiny", preset="quick").resolved()


# ---------------------------------------------------------------- fine-tuning: --init

def test_start_from_copies_every_layer_and_the_rows_of_classes_by_name(tiny_model):
    from birdcnn.train import start_from

    init = load_model(tiny_model, device="cpu")
    classes = ["not_bird", "bird", "zebra"]  # one class it knows, two it does not
    torch.manual_seed(0)
    net = build("tiny", len(classes))
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    assert start_from(net, init, classes) == 1
    head = head_name(net)
    src, got = init.net.state_dict(), net.state_dict()
    for name, t in got.items():
        if name.startswith(head + "."):
            assert torch.equal(t[1], src[name][init.classes.index("bird")])
            assert torch.equal(t[[0, 2]], fresh[name][[0, 2]])  # unknown classes keep their fresh start
        else:
            assert torch.equal(t, src[name]), name  # BatchNorm statistics too


def test_fine_tuning_the_shipped_model_keeps_what_it_knows(cifar_small, tmp_path, capsys):
    """One short epoch on 500 CIFAR-10 images from the shipped model: its network, view and
    normalisation carry over, the run records the weights it started from, and it classifies the
    held-back images far better than chance (a run from scratch this short is near 10-20%)."""
    from birdcnn.modelfile import default_model_path, read_metadata

    out = tmp_path / "ft"
    assert main(["train", "--data", str(cifar_small), "--init", "default", "--epochs", "1", "--batch-size", "100",
                 "--val-size", "100", "--device", "cpu", "--out", str(out)]) == 0
    assert "starting from default (283 classes): 10 of this run's 10 classes known to it" in capsys.readouterr().err
    shipped, meta = read_metadata(default_model_path()), read_metadata(out / "model.json")
    for key in ("arch", "input_size", "zoom_size", "mean", "std"):
        assert meta[key] == shipped[key], key
    config = meta["training"]["config"]
    assert (config["init"], config["init_sha256"]) == ("default", shipped["weights_sha256"])
    test = load_split(cifar_small, "test")
    accuracy = float((load_model(out).probabilities(test.images, tta="none").argmax(1) == test.labels).mean())
    assert accuracy > 0.7, accuracy


@pytest.mark.parametrize("args, words", [
    (["--init", "missing"], "missing.json: model metadata not found"),
    (["--init", "birds.onnx"], "--init birds.onnx: an ONNX export holds no trainable weights"),
    (["--init", "default", "--arch", "tiny"], "--init default is a 'fast' network: --arch tiny cannot start from it"),
    (["--init", "default", "--widths", "32", "64", "64"], "--init default: its network does not fit this run's"),
])
def test_an_init_model_that_does_not_fit_is_a_one_line_error(args, words, cifar_small, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(cifar_small), *args, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (out / "model.json").exists()


def test_a_tampered_init_model_is_refused_before_the_data_is_read(tmp_path, capsys):
    from birdcnn.modelfile import default_model_path

    src = default_model_path()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_bytes(src.read_bytes())
    weights = bytearray(src.with_suffix(".safetensors").read_bytes())
    weights[-100] ^= 1
    (tmp_path / "m" / "model.safetensors").write_bytes(bytes(weights))
    assert main(["train", "--data", str(tmp_path / "no-such-data"), "--init", str(tmp_path / "m"),
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors: weights do not match their metadata (sha256 differs)" in err, err
