"""Mixing (`birdcnn train --mix`): CutMix and MixUp targets match the pixels they mix, only a
fraction of batches is mixed, and a mixed, mined run resumes exactly."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from birdcnn.augment import Mix
from birdcnn.cli import main
from birdcnn.errors import TrainingInterrupted
from birdcnn.train import TrainConfig, train

N = 6


def constant_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value i and labelled class i: a mixed pixel tells its source."""
    x = torch.arange(N, dtype=torch.float32).view(N, 1, 1, 1).expand(N, 3, 16, 16).contiguous()
    return x, torch.arange(N)


def test_cutmix_pastes_a_box_and_weighs_labels_by_its_area():
    torch.manual_seed(0)
    x, y = constant_images()
    mx, my = Mix("cutmix", p=1.0, n_classes=N)(x, y)
    assert my.shape == (N, N) and torch.allclose(my.sum(1), torch.ones(N))
    for i in range(N):
        own = (mx[i] == i).float().mean()
        assert torch.isclose(my[i, i], own, atol=1e-6), "the label share is the share of own pixels"
        other = mx[i][0] != i
        if other.any():  # the pasted part is one rectangle from one other image
            rows, cols = other.any(1).nonzero().flatten(), other.any(0).nonzero().flatten()
            assert other[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
            assert len(mx[i][0][other].unique()) == 1


def test_mixup_blends_images_and_labels_alike():
    torch.manual_seed(1)
    x, y = constant_images()
    mx, my = Mix("mixup", p=1.0, n_classes=N)(x, y)
    values = torch.arange(N, dtype=torch.float32)
    assert torch.allclose(mx[:, 0, 0, 0], my @ values, atol=1e-5)
    assert (my.max(1).values < 1).all(), "every image is a blend of two"


def test_only_a_fraction_of_batches_is_mixed():
    torch.manual_seed(2)
    x, y = constant_images()
    mix = Mix("both", p=0.3, n_classes=N)
    mixed = 0
    for _ in range(300):
        mx, my = mix(x, y)
        if my.ndim == 1:
            assert mx is x and my is y, "an unmixed batch passes through untouched"
        mixed += my.ndim == 2
    assert 60 < mixed < 120


def mixed_run(cifar_small, out) -> TrainConfig:
    return TrainConfig(data=str(cifar_small), arch="tiny", epochs=2, batch_size=50, val_size=100, device="cpu",
                       hard_mining=2.0, mix="both", mix_p=0.5, out=str(out))


def test_a_mixed_run_records_its_mix_and_resumes_exactly(cifar_small, tmp_path):
    whole = train(mixed_run(cifar_small, tmp_path / "whole"))
    config = json.loads((whole / "model.json").read_text())["training"]["config"]
    assert (config["mix"], config["mix_p"]) == ("both", 0.5)
    history = json.loads((whole / "history.json").read_text())
    assert all(0 <= h["train_accuracy"] <= 1 for h in history)

    def stop_after_first_epoch(epoch, clf, seconds):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(mixed_run(cifar_small, tmp_path / "stopped"), on_epoch=stop_after_first_epoch)
    train(mixed_run(cifar_small, tmp_path / "stopped"), resume=True)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(tmp_path / "stopped" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args, message", [(["--mix", "blend"], "--mix: invalid choice"),
                                           (["--mix", "cutmix", "--mix-p", "0"], "--mix-p"),
                                           (["--mix-p", "0.3"], "--mix-p needs --mix")])
def test_bad_mix_settings_are_one_line_errors(cifar_small, tmp_path, capsys, args, message):
    try:  # argparse's own checks exit; birdcnn's return the code
        code = main(["train", "--data", str(cifar_small), *args, "--out", str(tmp_path / "r")])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) <= 3
    assert not (tmp_path / "r").exists()
