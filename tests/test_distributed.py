"""Data-parallel training with torchrun: 2 CPU processes (gloo) on tiny real data."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from birdcnn.errors import BirdcnnError
from birdcnn.modelfile import load_model
from birdcnn.train import MUON, TrainConfig, train

ARGS = ["--arch", "tiny", "--epochs", "2", "--batch-size", "60", "--val-size", "100", "--seed", "3"]


def torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           "-m", "birdcnn", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _weights(run) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_model(run / "model.json").net.state_dict().items()}


@pytest.fixture(scope="module")
def one_and_two(cifar_small, tmp_path_factory):
    """The same run (global batch 60) in 1 process and in 2 processes."""
    root = tmp_path_factory.mktemp("ddp")
    runs = {}
    for n in (1, 2):
        runs[n] = root / f"p{n}"
        r = torchrun(n, "--data", str(cifar_small), *ARGS, "--out", str(runs[n]))
        assert r.returncode == 0, r.stderr[-3000:]
    return runs


def test_two_processes_train_one_model_written_once(one_and_two):
    run = one_and_two[2]
    meta = json.loads((run / "model.json").read_text())
    assert meta["training"]["processes"] == 2
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]  # one set of files, from rank 0 (not two appended)
    # Same number of optimisation steps as one process: the global batch is split, not doubled.
    assert history[-1]["step"] == json.loads((one_and_two[1] / "history.json").read_text())[-1]["step"]


def test_two_processes_match_one_process_within_tolerance(one_and_two, cifar_small):
    """Gradients are averaged over the ranks, so the run follows the 1-process run; BatchNorm sees
    each rank's half-batch, which moves the weights a little (tolerance measured: see RESULTS)."""
    w1, w2 = _weights(one_and_two[1]), _weights(one_and_two[2])
    diff = torch.cat([(w1[k] - w2[k]).flatten() for k in w1 if "running" not in k])
    ref = torch.cat([w1[k].flatten() for k in w1 if "running" not in k])
    rel = (diff.norm() / ref.norm()).item()
    assert rel < 0.15, rel
    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (one_and_two[1], one_and_two[2]))
    assert abs(m1["test"]["accuracy"] - m2["test"]["accuracy"]) <= 0.08


def _replica_worker(rank: int, port: int, perturb: bool, out: list) -> None:
    from birdcnn import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    ranks = distributed.from_env()
    device = distributed.start(ranks, torch.device("cpu"))
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    if perturb and rank == 1:
        with torch.no_grad():
            net.weight[0, 0] += 1e-6
    try:
        distributed.check_replicas(net, ranks, device)
        out.put((rank, "same"))
    except BirdcnnError as e:
        out.put((rank, str(e)))
    finally:
        distributed.stop(ranks)


def _wrapper_worker(rank: int, port: int, out) -> None:
    import gc
    import weakref

    from birdcnn import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    gc.disable()  # as when nothing else allocates: only `stop` may collect the wrapper
    ranks = distributed.from_env()
    device = distributed.start(ranks, torch.device("cpu"))

    def train_step() -> weakref.ref:
        model = distributed.wrap(torch.nn.Linear(4, 2), ranks, device)
        model(torch.randn(3, 4)).sum().backward()
        return weakref.ref(model)

    wrapper = train_step()
    alive = wrapper() is not None
    distributed.stop(ranks)
    out.put((rank, (alive, wrapper() is not None)))


def test_stop_frees_the_ddp_wrapper_before_the_group_goes():
    """The wrapper survives its scope (a reference cycle); `stop` collects it, so the process
    group is not torn down at interpreter exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = mp.get_context("spawn").Queue()
    mp.start_processes(_wrapper_worker, args=(port, q), nprocs=2, start_method="spawn")
    assert dict(q.get(timeout=60) for _ in range(2)) == {0: (True, False), 1: (True, False)}


@pytest.mark.parametrize("perturb", [False, True])
def test_replica_check_sees_a_difference_of_one_weight(perturb):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    mp.start_processes(_replica_worker, args=(port, perturb, q), nprocs=2, start_method="spawn")
    results = dict(q.get(timeout=60) for _ in range(2))
    if perturb:
        assert all("different weights" in v for v in results.values()), results
    else:
        assert results == {0: "same", 1: "same"}


def test_resume_with_another_number_of_processes(cifar_small, tmp_path):
    """A run stopped after its first epoch (1 process) is finished by 2 processes."""
    out = tmp_path / "run"

    def stop_after_first_epoch(epoch, clf, seconds):
        raise KeyboardInterrupt

    cfg = TrainConfig(data=str(cifar_small), arch="tiny", epochs=2, batch_size=60, val_size=100, seed=3, out=str(out))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_epoch=stop_after_first_epoch)
    assert (out / "checkpoint.pt").is_file() and not (out / "model.json").exists()
    r = torchrun(2, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["processes"] == 2 and meta["training"]["command"].endswith("--resume")
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]
    probs = load_model(out / "model.json").probabilities(np.zeros((1, 32, 32, 3), np.uint8))
    assert np.isfinite(probs).all()


def test_torchrun_needs_an_out_folder(cifar_small):
    r = torchrun(2, "--data", str(cifar_small), *ARGS)
    assert r.returncode != 0
    assert "birdcnn train: error: training with torchrun needs --out RUN_DIR" in r.stderr


def test_muon_trains_data_parallel(cifar_small, tmp_path):
    """`--optimizer muon` in 2 processes: every rank orthogonalises the same averaged gradients, so
    the replicas stay identical (the run's final replica check would stop it otherwise)."""
    out = tmp_path / "run"
    r = torchrun(2, "--data", str(cifar_small), *ARGS, "--optimizer", "muon", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["processes"] == 2 and meta["training"]["config"]["optimizer"] == "muon"
    assert meta["training"]["config"]["lr"] == MUON["lr"]


def test_hard_mining_merges_every_ranks_records(cifar_small, tmp_path):
    """Each rank sees its half of every batch; the next epoch's draw must rest on both halves
    (identical on every rank), so the records are summed over the ranks at the epoch's end."""
    out = tmp_path / "run"
    r = torchrun(2, "--data", str(cifar_small), *ARGS, "--epochs", "1", "--hard-mining", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    hard = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["mining"]["hardness"]
    # 8 batches of 60 of the 500 images; after one epoch almost every drawn image is somewhat wrong
    assert (hard > 0).float().mean() > 0.85, "only one rank's records were kept"
