"""The aggregation network, its checkpoint format, streaming aggregation and weight resolution."""

from __future__ import annotations

import hashlib
import http.server
import pickle
import threading
import warnings

import pytest
import torch
from torch.nn import functional as F

from corrbench.errors import WeightsError
from corrbench_dhf import checkpoint as ck
from corrbench_dhf import weights as wt
from corrbench_dhf.network import AggregationNetwork, cosine_logits, slot_index, slot_of

SD_CHANNELS = [1280] * 6 + [640] * 3 + [320] * 3
TINY = [16, 16, 16, 16, 16, 16, 8, 8, 8, 8, 8, 8]


def tiny_net(timesteps=3, seed=0, channels=TINY, projection=64, groups=8) -> AggregationNetwork:
    torch.manual_seed(seed)
    net = AggregationNetwork(channels, timesteps, projection_dim=projection, num_norm_groups=groups)
    with torch.no_grad():  # distinct mixing weights so every slot matters
        net.mixing_weights.copy_(torch.randn(net.num_slots))
        for p in net.parameters():
            if p.ndim == 1 and p is not net.mixing_weights:
                p.add_(0.1 * torch.randn_like(p))
    return net.eval()


# -- reference: the official forward re-computed with functional ops from the state dict alone -------
def _ref_convnorm(x, sd, prefix, groups, padding=0):
    x = F.conv2d(x, sd[prefix + ".weight"], padding=padding)
    return F.group_norm(x, groups, sd[prefix + ".norm.weight"], sd[prefix + ".norm.bias"], eps=1e-5)


def reference_hyperfeatures(sd, channels, timesteps, stacked, groups):
    """Σ_i softmax(w)_i · Bottleneck_{i mod L}(slice i) with slices walked in timestep-major order."""
    w = torch.exp(sd["mixing_weights"]) / torch.exp(sd["mixing_weights"]).sum()
    out, start = 0, 0
    for i in range(len(channels) * timesteps):
        layer = i % len(channels)
        x = stacked[:, start:start + channels[layer]]
        start += channels[layer]
        p = f"bottleneck_layers.{layer}.0."
        h = torch.relu(_ref_convnorm(x, sd, p + "conv1", groups))
        h = torch.relu(_ref_convnorm(h, sd, p + "conv2", groups, padding=1))
        h = _ref_convnorm(h, sd, p + "conv3", groups)
        short = _ref_convnorm(x, sd, p + "shortcut", groups) if p + "shortcut.weight" in sd else x
        out = out + w[i] * torch.relu(h + short)
    return out


def test_official_state_dict_layout_for_sd15():
    """docs/methods.md#checkpoint-format: 145 entries, 6,529,668 values for Ours; 6,529,548 for One-Step."""
    ours = AggregationNetwork(SD_CHANNELS, 11).state_dict()
    assert len(ours) == 145
    assert sum(v.numel() for v in ours.values()) == 6_529_668
    assert ours["mixing_weights"].shape == (132,)
    assert ours["bottleneck_layers.0.0.shortcut.weight"].shape == (384, 1280, 1, 1)
    assert ours["bottleneck_layers.11.0.conv1.weight"].shape == (96, 320, 1, 1)
    assert ours["bottleneck_layers.7.0.conv2.weight"].shape == (96, 96, 3, 3)
    assert ours["bottleneck_layers.3.0.conv3.norm.bias"].shape == (384,)
    one = AggregationNetwork(SD_CHANNELS, 1).state_dict()
    assert len(one) == 145 and sum(v.numel() for v in one.values()) == 6_529_548
    assert ck.expected_shapes(SD_CHANNELS, 11, 384) == {k: tuple(v.shape) for k, v in ours.items()}


def test_init_matches_official():
    net = AggregationNetwork([320], 2, projection_dim=384)
    assert torch.equal(net.mixing_weights.data, torch.ones(2))
    assert abs(float(net.logit_scale.exp()) - 1 / 0.07) < 1e-4
    assert "logit_scale" not in net.state_dict()
    block = net.bottleneck_layers[0][0]
    assert block.conv1.norm.num_groups == 32 and block.conv1.out_channels == 96 and block.conv1.bias is None
    # c2_msra_fill: Kaiming normal with fan_out; std = sqrt(2 / (out · k · k))
    std = float(block.conv2.weight.detach().std())
    assert abs(std - (2 / (96 * 9)) ** 0.5) < 0.1 * (2 / (96 * 9)) ** 0.5
    assert torch.equal(block.conv3.norm.weight.data, torch.ones(384))  # no zero-init of the last norm


def test_forward_equals_functional_reference():
    net = tiny_net(timesteps=3)
    stacked = torch.randn(2, 3 * sum(TINY), 16, 16)
    with torch.no_grad():
        ours = net(stacked)
    ref = reference_hyperfeatures(net.state_dict(), TINY, 3, stacked, groups=8)
    assert ours.shape == (2, 64, 16, 16)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_streaming_equals_stack_then_aggregate_in_any_arrival_order():
    net = tiny_net(timesteps=4, seed=1)
    feats = {(s, l): torch.randn(2, c, 12, 12) for s in range(4) for l, c in enumerate(TINY)}
    stacked = torch.cat([feats[(s, l)] for s in range(4) for l in range(len(TINY))], dim=1)
    order = list(feats)
    torch.manual_seed(3)
    order = [order[i] for i in torch.randperm(len(order))]
    with torch.inference_mode():
        agg = net.streaming()
        for key in order:
            agg(*key, feats[key])
        streamed = agg.result()
        stacked_out = net(stacked)
    torch.testing.assert_close(streamed, stacked_out, rtol=1e-5, atol=1e-6)


def test_streaming_reports_missing_and_duplicate_maps():
    net = tiny_net(timesteps=2)
    agg = net.streaming()
    with torch.no_grad():
        agg(0, 0, torch.randn(1, 16, 8, 8))
        with pytest.raises(ValueError, match="arrived twice"):
            agg(0, 0, torch.randn(1, 16, 8, 8))
        with pytest.raises(ValueError, match="channels"):
            agg(0, 1, torch.randn(1, 5, 8, 8))
        with pytest.raises(IndexError):
            agg(2, 0, torch.randn(1, 16, 8, 8))
    with pytest.raises(RuntimeError, match="incomplete"):
        agg.result()


def test_streaming_trains_through_inference_mode_features():
    """Pitfall P7: features made (and consumed) under inference_mode still train the network."""
    net = tiny_net(timesteps=2, seed=4).train()
    feats = {(s, l): torch.randn(1, c, 8, 8) for s in range(2) for l, c in enumerate(TINY)}
    agg = net.streaming(track_grad=True)
    with torch.inference_mode():
        for key, f in feats.items():
            agg(*key, f.clone())  # an inference tensor, consumed inside inference mode
    out = agg.result()
    assert out.requires_grad and not out.is_inference()
    out.square().mean().backward()
    streamed_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    stacked = torch.cat([feats[(s, l)] for s in range(2) for l in range(len(TINY))], dim=1)
    net(stacked).square().mean().backward()
    for a, p in zip(streamed_grads, net.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_softmax_is_joint_over_all_slots_without_warning():
    net = tiny_net(timesteps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = net.mixing_softmax()
    assert w.shape == (36,)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    manual = net.mixing_weights.exp() / net.mixing_weights.exp().sum()
    torch.testing.assert_close(w, manual)


def test_slot_order_is_timestep_major():
    # pitfall P1: slot 11 is layer 12 (index 11) at the first timestep, slot 12 is layer 1 at the second
    assert (slot_of(11, 12).timestep_slot, slot_of(11, 12).layer) == (0, 11)
    assert (slot_of(12, 12).timestep_slot, slot_of(12, 12).layer) == (1, 0)
    assert (slot_of(131, 12).timestep_slot, slot_of(131, 12).layer) == (10, 11)
    for i in range(132):
        s = slot_of(i, 12)
        assert slot_index(s.timestep_slot, s.layer, 12) == i


def test_cosine_logits_scale():
    a, b = torch.randn(5, 7), torch.randn(9, 7)
    logits = cosine_logits(a, b, 1 / 0.07)
    ref = torch.tensor([[float(torch.dot(x, y) / (x.norm() * y.norm())) / 0.07 for y in b] for x in a])
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)


# -- checkpoints -------------------------------------------------------------------------------------
def test_official_checkpoint_round_trip(tmp_path):
    net = tiny_net(timesteps=3, seed=5)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(1, 3 * sum(TINY), 8, 8)).sum().backward()
    opt.step()
    path = ck.save_checkpoint(tmp_path / "checkpoint_step_7.pt", net, config={"save_timestep": [49, 45, 40]},
                              step=7, optimizer_state=opt.state_dict())
    raw = torch.load(path, weights_only=True)
    assert set(raw) == set(ck.OFFICIAL_KEYS)
    assert raw["step"] == 7 and raw["config"]["save_timestep"] == [49, 45, 40]
    loaded = ck.load_checkpoint(path)
    assert (loaded.layer_channels, loaded.num_timesteps, loaded.projection_dim) == (TINY, 3, 64)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    rebuilt = loaded.build(num_norm_groups=8)
    x = torch.randn(1, 3 * sum(TINY), 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x))
    opt2 = torch.optim.AdamW(rebuilt.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded.optimizer_state)


def test_safetensors_round_trip(tmp_path):
    net = tiny_net(timesteps=2, seed=6)
    path = ck.save_safetensors(tmp_path / "net.safetensors", net, config={"projection_dim": 64, "num_norm_groups": 8},
                               step=3)
    loaded = ck.load_checkpoint(path)
    assert loaded.config["projection_dim"] == 64 and loaded.step == 3
    rebuilt = loaded.build()
    for k, v in net.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v)


def test_load_names_missing_unexpected_and_misshaped_keys(tmp_path):
    net = tiny_net(timesteps=2)
    sd = dict(net.state_dict())
    sd.pop("bottleneck_layers.3.0.conv2.norm.bias")
    sd["bottleneck_layers.4.0.conv2.weight"] = torch.zeros(16, 16, 1, 1)
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError) as err:
        ck.check_state_dict(sd, TINY, 2, 64, "x.pt")
    msg = str(err.value)
    assert "bottleneck_layers.3.0.conv2.norm.bias" in msg and "extra.weight" in msg
    assert "bottleneck_layers.4.0.conv2.weight has shape (16, 16, 1, 1), expected (16, 16, 3, 3)" in msg
    with pytest.raises(WeightsError, match="timestep"):
        ck.load_state_dict(AggregationNetwork(TINY, 3, projection_dim=64, num_norm_groups=8), net.state_dict(), "y.pt")


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_load_refuses_pickled_code_and_foreign_files(tmp_path):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"aggregation_network": Evil()}, fh, protocol=2)
    with pytest.raises(WeightsError, match="weights-only loading refuses"):
        ck.load_checkpoint(evil)
    other = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, other)
    with pytest.raises(WeightsError, match="expected the official checkpoint dict"):
        ck.load_checkpoint(other)
    with pytest.raises(WeightsError, match="do not exist"):
        ck.load_checkpoint(tmp_path / "absent.pt")
    bare = tmp_path / "bare.pt"
    torch.save(tiny_net(timesteps=1).state_dict(), bare)
    assert ck.load_checkpoint(bare).num_timesteps == 1


# -- weights resolution --------------------------------------------------------------------------------
def test_resolve_random_and_local(tmp_path):
    assert wt.resolve("random", wt.RELEASED_FILES["dhf"]) is None
    f = tmp_path / "w.pt"
    f.write_bytes(b"x")
    assert wt.resolve(str(f), wt.RELEASED_FILES["dhf"]) == f
    with pytest.raises(WeightsError, match="no such file"):
        wt.resolve(str(tmp_path / "nope.pt"), wt.RELEASED_FILES["dhf"])


def test_offline_without_cached_file_is_one_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsError) as err:
        wt.resolve("auto", wt.RELEASED_FILES["dhf-one-step"])
    msg = str(err.value)
    assert "g-luo/diffusion-hyperfeatures" in msg and "weights/aggregation_network_one-step.pt" in msg
    assert "hf download" in msg and "dhf.weights=PATH" in msg


class _HubHandler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[str] = []

    def _respond(self, body: bool):
        self.requests.append(f"{self.command} {self.path}")
        data = self.files.get(self.path.split("?")[0])
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):  # noqa: N802
        self._respond(False)

    def do_GET(self):  # noqa: N802
        self._respond(True)

    def log_message(self, *args):
        pass


def test_auto_downloads_the_released_file_from_the_hub_layout(tmp_path, monkeypatch):
    """A loopback server in the Hub's resolve/ URL layout stands in for huggingface.co."""
    import huggingface_hub.constants as hc

    path = ck.save_checkpoint(tmp_path / "src.pt", tiny_net(timesteps=1), config={"save_timestep": [0]})
    _HubHandler.files = {"/g-luo/diffusion-hyperfeatures/resolve/main/weights/aggregation_network_one-step.pt":
                         path.read_bytes()}
    _HubHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(wt, "HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
        got = wt.resolve("auto", wt.RELEASED_FILES["dhf-one-step"])
        assert got.read_bytes() == path.read_bytes()
        assert str(tmp_path / "hub") in str(got)
        assert ck.load_checkpoint(got).config == {"save_timestep": [0]}
        with pytest.raises(WeightsError, match="aggregation_network_sdv2-1.pt"):
            wt.resolve("auto", wt.RELEASED_FILES["dhf-sd21"])
    finally:
        server.shutdown()
        server.server_close()
