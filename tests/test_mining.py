"""Hard-example mining (`birdcnn train --hard-mining F`): what counts as hard, how it sets the
next epoch's draw, and that a mined run stops and resumes to the same weights."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from birdcnn.cli import main
from birdcnn.distributed import Ranks
from birdcnn.errors import TrainingInterrupted
from birdcnn.mining import HardMining
from birdcnn.train import TrainConfig, prepare_data, train

ONE = Ranks()  # one process


def test_hardness_is_how_wrong_p_positive_was_from_the_smoothed_target():
    m = HardMining(n=5, positive=1, n_classes=4, label_smoothing=0.2, strength=3.0)
    big = 20.0  # a logit that puts essentially all probability on one class
    logits = torch.tensor([[0, big, 0, 0],     # a positive, sure and right
                           [big, 0, 0, 0],     # a positive, sure and wrong
                           [big, 0, 0, 0],     # a negative, sure and right
                           [0, big, 0, 0]])    # a negative, sure and wrong
    m.record(torch.tensor([0, 1, 2, 3]), logits, torch.tensor([1, 1, 0, 2]))
    assert not m.hardness.any(), "nothing changes the draw before the epoch ends"
    m.end_epoch(ONE, torch.device("cpu"))
    np.testing.assert_allclose(m.hardness.numpy(), [0, 1, 0, 1, 0], atol=1e-6)
    # an image drawn twice averages its records; one not drawn this epoch keeps its hardness
    m.record(torch.tensor([3, 3]), torch.tensor([[big, 0, 0, 0], [0, big, 0, 0]]), torch.tensor([2, 2]))
    m.end_epoch(ONE, torch.device("cpu"))
    assert m.hardness[3] == pytest.approx(0.5) and m.hardness[1] == pytest.approx(1)
    # the next draw: 1 + 3 x hardness, times the source/class weights
    base = np.array([1, 1, 1, 1, 2.0])
    np.testing.assert_allclose(m.weights(base), base * (1 + 3 * m.hardness.numpy()))
    assert m.weights(None)[1] == pytest.approx(4)


def test_before_any_record_the_draw_is_unchanged():
    m = HardMining(n=3, positive=0, n_classes=2, label_smoothing=0.0, strength=1.0)
    base = np.array([1.0, 2.0, 3.0])
    assert m.weights(None) is None and m.weights(base) is base


def test_state_round_trips_and_refuses_other_data():
    m = HardMining(n=3, positive=0, n_classes=2, label_smoothing=0.0, strength=1.0)
    m.record(torch.tensor([1]), torch.tensor([[0.0, 5.0]]), torch.tensor([0]))
    other = HardMining(n=3, positive=0, n_classes=2, label_smoothing=0.0, strength=1.0)
    other.load_state(m.state())
    other.end_epoch(ONE, torch.device("cpu"))
    assert other.hardness[1] > 0.9
    with pytest.raises(ValueError, match="for 3 images, the data has 4"):
        HardMining(n=4, positive=0, n_classes=2, label_smoothing=0.0, strength=1.0).load_state(m.state())


def mined(cifar_small, out) -> TrainConfig:
    return TrainConfig(data=str(cifar_small), arch="tiny", epochs=2, batch_size=50, val_size=100, device="cpu",
                       hard_mining=4.0, out=str(out))


def test_a_mined_run_draws_its_hard_images_more_and_resumes_exactly(cifar_small, tmp_path):
    whole = train(mined(cifar_small, tmp_path / "whole"))
    assert json.loads((whole / "model.json").read_text())["training"]["config"]["hard_mining"] == 4.0

    def stop_after_first_epoch(epoch, clf, seconds):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the run stops at this step with a checkpoint

    with pytest.raises(TrainingInterrupted):
        train(mined(cifar_small, tmp_path / "stopped"), on_epoch=stop_after_first_epoch)
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt", map_location="cpu", weights_only=True)["mining"]
    hard = state["hardness"].numpy()
    train_ds = prepare_data(mined(cifar_small, tmp_path).resolved()).train
    labels, bird = train_ds.labels, train_ds.classes.index("bird")
    assert (hard > 0).mean() > 0.5, "after one epoch most images have a record"
    # after one epoch the network hardly knows birds: positives are far harder than the rest,
    # so the next epoch draws them more than their 10% share
    assert hard[labels == bird].mean() > 3 * hard[labels != bird].mean()
    w = 1 + 4 * hard
    assert w[labels == bird].sum() / w.sum() > 0.15
    train(mined(cifar_small, tmp_path / "stopped"), resume=True)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(tmp_path / "stopped" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_negative_strength_is_a_one_line_error(cifar_small, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(cifar_small), "--hard-mining", "-1", "--out", str(tmp_path / "r")])
    assert e.value.code == 2 and "--hard-mining: must be a number 0 or more" in capsys.readouterr().err
