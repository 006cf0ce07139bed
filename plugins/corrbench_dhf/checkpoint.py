"""Reading and writing aggregation-network checkpoints (docs/methods.md#checkpoint-format).

The official format is a ``torch.save`` dict with ``step``, ``config``, ``aggregation_network`` (the
state dict) and ``optimizer_state_dict``. corrbench reads it with ``torch.load(weights_only=True)``
(never unpickling code), checks every key and shape against the architecture, and names what is
wrong. It writes the same dict (plus a ``corrbench`` entry with resume state, which the official
loader ignores) and, for sharing, a safetensors file whose metadata holds the config as JSON.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from corrbench.errors import WeightsError
from corrbench.hashing import sha256_file_memo
from corrbench.torchfile import load_weights_only

from .network import DEFAULT_NORM_GROUPS, AggregationNetwork

OFFICIAL_KEYS = ("step", "config", "aggregation_network", "optimizer_state_dict")
_BOTTLENECK_KEY = re.compile(r"^bottleneck_layers\.(\d+)\.0\.(shortcut|conv1|conv2|conv3)\.(weight|norm\.weight|norm\.bias)$")


@dataclass
class Checkpoint:
    """What a checkpoint file holds, with the architecture read off its tensor shapes."""

    path: Path | None
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    optimizer_state: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # corrbench's resume state, when present
    sha256: str = ""

    @property
    def layer_channels(self) -> list[int]:
        return infer_architecture(self.state_dict, self.source)["layer_channels"]

    @property
    def projection_dim(self) -> int:
        return infer_architecture(self.state_dict, self.source)["projection_dim"]

    @property
    def num_timesteps(self) -> int:
        return infer_architecture(self.state_dict, self.source)["num_timesteps"]

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "checkpoint"

    def build(self, *, num_norm_groups: int | None = None) -> AggregationNetwork:
        """A network with this checkpoint's architecture and weights (strict load)."""
        arch = infer_architecture(self.state_dict, self.source)
        groups = num_norm_groups or int(self.config.get("num_norm_groups", DEFAULT_NORM_GROUPS))
        net = AggregationNetwork(arch["layer_channels"], arch["num_timesteps"],
                                 projection_dim=arch["projection_dim"], num_norm_groups=groups)
        load_state_dict(net, self.state_dict, self.source)
        return net


def infer_architecture(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, Any]:
    """Layer channels, projection dim and timestep count from the tensor shapes, or a WeightsError."""
    if "mixing_weights" not in state_dict:
        raise WeightsError(f"{source}: aggregation network state dict has no 'mixing_weights' entry")
    layers: dict[int, int] = {}
    projection = None
    for key, value in state_dict.items():
        m = _BOTTLENECK_KEY.match(key)
        if m and m.group(2) == "conv1" and m.group(3) == "weight":
            layers[int(m.group(1))] = int(value.shape[1])
        if m and m.group(2) == "conv3" and m.group(3) == "weight":
            projection = int(value.shape[0])
    if not layers or projection is None:
        raise WeightsError(f"{source}: no 'bottleneck_layers.{{l}}.0.conv1.weight' / 'conv3.weight' entries; "
                           "not a Diffusion Hyperfeatures aggregation network")
    if sorted(layers) != list(range(len(layers))):
        raise WeightsError(f"{source}: bottleneck layer indices {sorted(layers)} are not 0..{len(layers) - 1}")
    channels = [layers[i] for i in range(len(layers))]
    n_mix = int(state_dict["mixing_weights"].numel())
    if n_mix % len(channels):
        raise WeightsError(f"{source}: {n_mix} mixing weights is not a multiple of {len(channels)} layers")
    return {"layer_channels": channels, "projection_dim": projection, "num_timesteps": n_mix // len(channels)}


def expected_shapes(layer_channels: Sequence[int], num_timesteps: int, projection_dim: int) -> dict[str, tuple]:
    """The exact key → shape table (docs/methods.md#checkpoint-format) for an architecture."""
    width = projection_dim // 4
    shapes: dict[str, tuple] = {"mixing_weights": (len(layer_channels) * num_timesteps,)}
    for l, c in enumerate(layer_channels):
        p = f"bottleneck_layers.{l}.0."
        convs = {"conv1": (width, c, 1, 1), "conv2": (width, width, 3, 3), "conv3": (projection_dim, width, 1, 1)}
        if c != projection_dim:
            convs = {"shortcut": (projection_dim, c, 1, 1), **convs}
        for name, shape in convs.items():
            shapes[p + name + ".weight"] = shape
            shapes[p + name + ".norm.weight"] = (shape[0],)
            shapes[p + name + ".norm.bias"] = (shape[0],)
    return shapes


def check_state_dict(state_dict: dict[str, torch.Tensor], layer_channels: Sequence[int], num_timesteps: int,
                     projection_dim: int, source: str = "checkpoint") -> None:
    """Raise a WeightsError naming every missing, unexpected or mis-shaped key."""
    want = expected_shapes(layer_channels, num_timesteps, projection_dim)
    problems = []
    missing = [k for k in want if k not in state_dict]
    unexpected = [k for k in state_dict if k not in want]
    wrong = [f"{k} has shape {tuple(state_dict[k].shape)}, expected {want[k]}"
             for k in want if k in state_dict and tuple(state_dict[k].shape) != want[k]]
    if missing:
        problems.append(f"missing {len(missing)} key(s): {', '.join(missing[:6])}{' …' if len(missing) > 6 else ''}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): "
                        f"{', '.join(unexpected[:6])}{' …' if len(unexpected) > 6 else ''}")
    if wrong:
        problems.append("; ".join(wrong[:6]) + (" …" if len(wrong) > 6 else ""))
    if problems:
        raise WeightsError(f"{source} does not match an aggregation network with layer channels "
                           f"{list(layer_channels)}, {num_timesteps} timestep(s), projection {projection_dim}: "
                           + "; ".join(problems))


def load_state_dict(network: AggregationNetwork, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    check_state_dict(state_dict, network.layer_channels, network.num_timesteps, network.projection_dim, source)
    network.load_state_dict(state_dict, strict=True)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read an official ``.pt`` dict, a bare state dict, or a corrbench ``.safetensors`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"aggregation-network weights {path} do not exist")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    obj = load_weights_only(path)  # a truncated, foreign or code-carrying file: one WeightsError naming it
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    if "aggregation_network" in obj:
        state = obj["aggregation_network"]
        if not isinstance(state, dict):
            raise WeightsError(f"{path}: 'aggregation_network' is a {type(state).__name__}, not a state dict")
        if not isinstance(obj.get("config") or {}, dict):
            raise WeightsError(f"{path}: 'config' is a {type(obj['config']).__name__}, not a dict")
        config = obj.get("config") or {}
        extra = obj.get("corrbench") if isinstance(obj.get("corrbench"), dict) else {}
        ckpt = Checkpoint(path, dict(state), dict(config), _as_int(obj.get("step")), obj.get("optimizer_state_dict"),
                          dict(extra))
    elif "mixing_weights" in obj:  # a bare state dict
        ckpt = Checkpoint(path, dict(obj))
    else:
        raise WeightsError(f"{path} has keys {sorted(map(str, obj))[:8]}; expected the official checkpoint dict "
                           f"with {', '.join(OFFICIAL_KEYS)} (or a bare aggregation-network state dict)")
    bad = [k for k, v in ckpt.state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: state dict entries {bad[:5]} are not named tensors")
    ckpt.sha256 = sha256_file_memo(path)
    infer_architecture(ckpt.state_dict, str(path))  # fail early on a foreign file
    return ckpt


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _load_safetensors(path: Path) -> Checkpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise WeightsError(f"{path} could not be read as safetensors: {type(exc).__name__}: {exc}") from exc
    try:
        config = json.loads(meta.get("config", "{}"))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: metadata 'config' is not JSON: {exc}") from exc
    ckpt = Checkpoint(path, state, config, _as_int(meta.get("step")))
    ckpt.sha256 = sha256_file_memo(path)
    infer_architecture(state, str(path))
    return ckpt


def _plain(value: Any) -> Any:
    """Config values reduced to what ``weights_only`` loading and JSON both accept."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: str | os.PathLike, network: AggregationNetwork, *, config: dict[str, Any] | None = None,
                    step: int = 0, optimizer_state: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write the official dict (``step``, ``config``, ``aggregation_network``, ``optimizer_state_dict``)."""
    path = Path(path)
    obj: dict[str, Any] = {
        "step": int(step),
        "config": _plain(config or {}),
        "aggregation_network": {k: v.detach().cpu().clone() for k, v in network.state_dict().items()},
        "optimizer_state_dict": optimizer_state if optimizer_state is not None else {},
    }
    if extra:
        obj["corrbench"] = extra
    _atomic_torch_save(obj, path)
    return path


def save_safetensors(path: str | os.PathLike, network: AggregationNetwork, *, config: dict[str, Any] | None = None,
                     step: int | None = None) -> Path:
    """The weights alone as safetensors; the config travels as JSON in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "config": json.dumps(_plain(config or {}), sort_keys=True)}
    if step is not None:
        meta["step"] = str(int(step))
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path
