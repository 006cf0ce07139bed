"""`corrbench train dhf` with a global batch (``--pairs-per-step``) and on several processes (DDP).

The single-process accumulation is checked against an independent computation (per-pair gradients
taken one at a time on a fresh graph, averaged by hand, handed to the same AdamW). The distributed
path runs for real: two gloo processes under ``torch.distributed.run`` on the CLI with a tiny
random-weight SD, compared with one process at the same global batch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load_file

from corrbench.distributed import DistContext
from corrbench.errors import UsageError
from corrbench_dhf import checkpoint as ck
from corrbench_dhf import train as tr
from corrbench_dhf.network import AggregationNetwork, StreamingAggregator
from test_dhf_train import FakeSource, settings, write_disc_pairs


@pytest.fixture(scope="module")
def disc_pairs(tmp_path_factory):
    return write_disc_pairs(tmp_path_factory.mktemp("ddp-discs"), 7, seed=2)


# -- the global batch in one process -----------------------------------------------------------------------
def reference_training(source, pairs, s: tr.TrainSettings) -> AggregationNetwork:
    """Each step: the gradient of every pair of the step on its own, averaged by hand, then the optimiser."""
    torch.manual_seed(s.seed)
    net = AggregationNetwork(source.layer_channels, source.num_timesteps, projection_dim=s.projection_dim,
                             num_norm_groups=s.num_norm_groups)
    opt = tr.build_optimizer(net, s)
    params = list(net.parameters())
    for step in range(s.steps):
        grads = []
        for j in range(s.pairs_per_step):
            pair = pairs[tr.data_order(len(pairs), step * s.pairs_per_step + j, s.seed)]
            images, s_size, t_size = tr.load_pair_images(pair, s.load_size)
            agg = StreamingAggregator(net, track_grad=True)
            source.run(images, agg)
            maps = agg.result()
            R = maps.shape[-1]
            loss = tr.clip_loss(maps[0], maps[1], tr.points_to_cells(pair.source_points, s_size, R),
                                tr.points_to_cells(pair.target_points, t_size, R), float(net.logit_scale.exp()))
            grads.append(torch.autograd.grad(loss, params))
        opt.zero_grad()
        for i, p in enumerate(params):
            p.grad = torch.stack([g[i] for g in grads]).mean(0)
        opt.step()
    return net


def _sgd(network, s):
    return torch.optim.SGD(network.parameters(), lr=s.lr)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_pairs_per_step_equals_averaged_single_pair_gradients(tmp_path, disc_pairs, monkeypatch, optimizer):
    # AdamW (the paper's) barely sees a constant gradient factor; plain SGD checks the 1/N scaling too
    if optimizer == "sgd":
        monkeypatch.setattr(tr, "build_optimizer", _sgd)
    s = settings(steps=3, pairs_per_step=3, ckpt_every=10, lr=0.05 if optimizer == "sgd" else 1e-3)
    tr.train(FakeSource(), disc_pairs, tmp_path, s, progress=False)
    ref = reference_training(FakeSource(), disc_pairs, s).state_dict()
    got = ck.load_checkpoint(tmp_path / "aggregation_network.safetensors").state_dict
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6, msg=k)
    # steps 0..2 take positions 0..8 of the data order, which crosses into epoch 1 (7 pairs)
    rows = [r for r in tr.read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    expect = [[disc_pairs[tr.data_order(7, 3 * step + j, 0)].id for j in range(3)] for step in range(3)]
    assert [r["pairs"] for r in rows] == expect and [r["step"] for r in rows] == [1, 2, 3]
    raw = torch.load(tmp_path / "aggregation_network.pt", weights_only=True)
    assert raw["config"]["pairs_per_step"] == 3 and raw["corrbench"]["data_position"] == 9


def test_pairs_per_step_one_is_the_official_order():
    for step in range(30):
        assert tr.step_pairs(12, step, 1, 0) == [tr.data_order(12, step, 0)]
    assert tr.step_pairs(12, 2, 4, 5) == [tr.data_order(12, k, 5) for k in range(8, 12)]


def test_pairs_per_step_must_split_evenly_over_processes(tmp_path, disc_pairs):
    # a context that claims two ranks: the check comes before any collective, so no group is needed
    with pytest.raises(UsageError, match="--pairs-per-step 3 is not a multiple of the 2 processes"):
        tr.train(FakeSource(), disc_pairs, tmp_path, settings(steps=1, pairs_per_step=3), progress=False,
                 ctx=DistContext(rank=0, world_size=2))
    with pytest.raises(UsageError, match="--pairs-per-step must be at least 1"):
        tr.train(FakeSource(), disc_pairs, tmp_path, settings(steps=1, pairs_per_step=0), progress=False)


def test_resume_refuses_another_pairs_per_step(tmp_path, disc_pairs):
    tr.train(FakeSource(), disc_pairs, tmp_path, settings(steps=2, ckpt_every=1, pairs_per_step=2), progress=False,
             stop_after=1)
    with pytest.raises(UsageError, match="pairs_per_step=2"):
        tr.train(FakeSource(), disc_pairs, tmp_path, settings(steps=2, ckpt_every=1), resume=True, progress=False)


# -- two gloo processes on the CLI ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    pytest.importorskip("diffusers")
    from corrbench.testing.sd import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("ddp-sd") / "sd")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli_args(tiny_sd, out, steps, *extra):
    return ["train", "dhf", "--dataset", "synthetic", "--split", "trn", "--one-step", "--load-size", "32",
            "--projection-dim", "32", "--norm-groups", "8", "--pairs-per-step", "2", "--steps", str(steps),
            "--ckpt-every", "1", "--val-split", "val", "--val-limit", "3", "--val-every", "2", "--out", str(out),
            "--quiet", "--set", f"sd.model={tiny_sd}", "--set", "sd.image_size=64", "--set", "sd.output_resolution=16",
            *extra]


@contextmanager
def one_thread():
    """Match the torchrun ranks (OMP_NUM_THREADS=1): the tiny random SD's features are ill-conditioned
    enough that a different CPU thread split alone moves the loss by 1e-4 relative."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _weights(path):
    return load_file(str(path)) if str(path).endswith(".safetensors") else ck.load_checkpoint(path).state_dict


def _assert_same_weights(a, b):
    a, b = _weights(a), _weights(b)
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-5), (k, float((a[k] - b[k]).abs().max()))


def _trained_rows(path, upto):
    rows = tr.read_metrics(path)
    steps = [(r["step"], r["pairs"]) for r in rows if "loss" in r and r["step"] <= upto]
    val = [(r["step"], r["val_pck@0.10_bbox"], r["val_n_keypoints"]) for r in rows
           if "val_n_pairs" in r and r["step"] <= upto]
    losses = [r["loss"] for r in rows if "loss" in r and r["step"] <= upto]
    return steps, val, losses


@pytest.mark.slow
def test_two_gloo_processes_train_like_one_at_the_same_global_batch(tmp_path, tiny_sd):
    from click.testing import CliRunner

    from corrbench.cli import build_cli

    one, two = tmp_path / "one", tmp_path / "two"
    with one_thread():
        res = CliRunner().invoke(build_cli(), _cli_args(tiny_sd, one, 3))
    assert res.exit_code == 0, res.output

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                           "-m", "corrbench", *_cli_args(tiny_sd, two, 2)],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("trained 2 steps × 2 pairs in 2 processes") == 1  # only rank 0 reports

    # after 2 steps: the same network (up to float summation order), pairs, validation numbers and losses
    _assert_same_weights(two / "aggregation_network.safetensors", one / "checkpoint_step_2.pt")
    steps_1, val_1, loss_1 = _trained_rows(one / "metrics.jsonl", 2)
    steps_2, val_2, loss_2 = _trained_rows(two / "metrics.jsonl", 2)
    assert steps_2 == steps_1 and [s for s, _ in steps_1] == [1, 2] and all(len(p) == 2 for _, p in steps_1)
    assert val_2 == val_1 and [v[0] for v in val_1] == [0, 2]  # sharded validation gathered in pair order
    assert loss_2 == pytest.approx(loss_1, abs=1e-5)
    raw = torch.load(two / "checkpoint_step_2.pt", weights_only=True)
    assert raw["config"]["processes"] == 2 and len(raw["corrbench"]["rng_cpu_by_rank"]) == 2
    assert sorted(p.name for p in two.glob("*.pt")) == ["aggregation_network.pt", "best.pt",
                                                        "checkpoint_step_1.pt", "checkpoint_step_2.pt"]

    # the two-process checkpoint resumes (here in one process) to the straight one-process run
    with one_thread():
        res = CliRunner().invoke(build_cli(), _cli_args(tiny_sd, two, 3, "--resume"))
    assert res.exit_code == 0, res.output
    _assert_same_weights(two / "aggregation_network.safetensors", one / "aggregation_network.safetensors")
    assert _trained_rows(two / "metrics.jsonl", 3)[0] == _trained_rows(one / "metrics.jsonl", 3)[0]


ENTRY = """
import pickle, sys
sys.path.insert(0, sys.argv[1])
from test_dhf_train import FakeSource, settings
from corrbench_dhf import train as tr
pairs = pickle.load(open(sys.argv[2], "rb"))
tr.train(FakeSource(), pairs, sys.argv[3], settings(steps=2, pairs_per_step=2), progress=False)
"""


@pytest.mark.slow
def test_a_rank_that_fails_stops_every_rank(tmp_path, disc_pairs):
    """Rank 1's pair of the first step is unreadable: both ranks raise instead of rank 0 waiting in the all-reduce."""
    import pickle
    from pathlib import Path

    (tmp_path / "imgs").mkdir()
    pairs = write_disc_pairs(tmp_path / "imgs", 4, seed=3)
    broken = pairs[tr.step_pairs(4, 0, 2, 0)[1]]  # rank r takes entries r, r+W, ... of the step
    broken.target.unlink()
    (tmp_path / "pairs.pkl").write_bytes(pickle.dumps(pairs))
    (tmp_path / "entry.py").write_text(ENTRY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                           str(tmp_path / "entry.py"), str(Path(__file__).parent), str(tmp_path / "pairs.pkl"),
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode != 0
    assert "rank 1 failed" in proc.stderr and broken.target.name in proc.stderr
    assert not (tmp_path / "out" / "checkpoint_step_1.pt").exists()
