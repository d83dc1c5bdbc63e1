"""`--optimizer muon`: orthogonalised filter updates, SGD's step for everything else, and a run
that learns, stops and resumes bit for bit."""
from __future__ import annotations

import copy
import os
import signal
from pathlib import Path

import pytest
import torch

from birdcnn.cli import main
from birdcnn.data import load_split
from birdcnn.errors import TrainingInterrupted
from birdcnn.modelfile import load_model
from birdcnn.models import HEAD_SCALE, build
from birdcnn.muon import orthogonalise
from birdcnn.train import MUON, TrainConfig, make_optimizer, train

from test_train import assert_same_weights


@pytest.mark.parametrize("shape", [(48, 216), (300, 40)])
def test_orthogonalise_keeps_the_directions_and_evens_out_the_scales(shape):
    """The result has the input's singular vectors and singular values near 1, whatever the
    input's scales were (here spread over four orders of magnitude)."""
    torch.manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k))
    s = torch.logspace(1, -3, k)
    g = u @ torch.diag(s) @ v.T
    out = orthogonalise(g)
    assert out.shape == g.shape and out.dtype == g.dtype
    inner = u.T @ out @ v  # diagonal if the singular vectors are kept
    diag = inner.diagonal()
    assert (inner - torch.diag(diag)).abs().max() < 0.05
    # The largest third of the singular values, 20x apart, land within 0.5-1.5; none grows past 1.5.
    assert diag[: k // 3].min() > 0.5 and diag.max() < 1.5


def test_muon_groups_step_the_filters_orthogonally_and_the_rest_like_sgd():
    cfg = TrainConfig(data="unused", optimizer="muon").resolved()
    assert cfg.lr == MUON["lr"] and cfg.recipe["lookahead"] is None
    torch.manual_seed(0)
    net = build("fast", 10)
    opt = make_optimizer(net, cfg)
    grouped = [p for g in opt.param_groups for p in g["params"]]
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    muon = [g for g in opt.param_groups if g["orthogonal"]]
    sgd = [g for g in opt.param_groups if not g["orthogonal"]]
    assert len(muon) == 1 and all(p.dim() == 4 for p in muon[0]["params"]) and muon[0]["momentum"] == 0.6
    head = next(g for g in sgd if g["params"][0] is net[-2].weight)
    assert head["lr"] == pytest.approx(MUON["head_lr"] / (HEAD_SCALE * 256) ** 2)

    # The other groups: exactly torch.optim.SGD's Nesterov step with the same settings, twice (momentum too).
    reference = copy.deepcopy(net)
    ref_params = dict(reference.named_parameters())
    names = {id(p): n for n, p in net.named_parameters()}
    ref_opt = torch.optim.SGD([dict(params=[ref_params[names[id(p)]] for p in g["params"]], lr=g["lr"],
                                    weight_decay=g["weight_decay"]) for g in sgd], momentum=0.85, nesterov=True)
    x = torch.randn(16, 3, 32, 32)
    for _ in range(2):
        filters = [p.detach().clone() for p in muon[0]["params"]]
        for model, o in ((net, opt), (reference, ref_opt)):
            o.zero_grad()
            model(x).square().sum().backward()
            o.step()
        for g in sgd:
            for p in g["params"]:
                assert torch.allclose(p, ref_params[names[id(p)]], atol=1e-6), names[id(p)]
        with torch.no_grad():  # the same filters in both networks for the next step
            for p in muon[0]["params"]:
                ref_params[names[id(p)]].copy_(p)
    # The filters: renormalised to norm sqrt(out channels), then moved by lr x an orthogonal-ish matrix.
    for before, p in zip(filters, muon[0]["params"]):
        start = before * len(before) ** 0.5 / before.norm()
        step = ((start - p) / muon[0]["lr"]).reshape(len(p), -1)
        sv = torch.linalg.svdvals(step)
        assert sv.max() < 1.5 and sv[: len(sv) // 2].min() > 0.3


def test_muon_is_for_the_fast_networks(cifar_small, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(cifar_small), "--arch", "article", "--optimizer", "muon",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--optimizer muon does not fit --arch article" in err, err
    assert not out.exists()


@pytest.mark.parametrize("lookahead, stop_after", [(None, 1), (True, 4)])
def test_a_muon_run_learns_stops_and_resumes_exactly(cifar_small, tmp_path, lookahead, stop_after):
    """A short real run with Muon (and with `--lookahead`, whose average starts in epoch 4 and is
    checkpointed) beats chance on held-back images; stopped after an epoch (as Ctrl-C does) and
    resumed, it ends on the same weights as the run never stopped."""
    def config(out: Path) -> TrainConfig:
        return TrainConfig(data=str(cifar_small), arch="tiny", optimizer="muon", lookahead=lookahead, epochs=5,
                           batch_size=100, val_size=100, device="cpu", out=str(out))

    whole = train(config(tmp_path / "whole"))
    test = load_split(cifar_small, "test")
    accuracy = float((load_model(whole).probabilities(test.images).argmax(1) == test.labels).mean())
    assert accuracy > 0.17, accuracy

    def ctrl_c(epoch: int, clf, seconds: float) -> None:
        if epoch == stop_after:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(config(tmp_path / "stopped"), on_epoch=ctrl_c)
    train(config(tmp_path / "stopped"), resume=True)
    assert_same_weights(tmp_path / "stopped", whole)
