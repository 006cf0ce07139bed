"""The frozen ImageNet ResNet of HPF/DHPF and its candidate feature maps (docs/methods.md#dhpf-and-hpf).

Candidate ids: 0 is the stem (conv1 → bn1 → ReLU → max-pool), id k ≥ 1 is the k-th bottleneck counted
across the four stages (``layer1[0]`` is id 1): 34 ids for ResNet-101, 17 for ResNet-50. A bottleneck's
map is the sum bn3(...) + shortcut **before** the block's last ReLU. torchvision's ``Bottleneck``
applies one in-place ReLU module three times and adds the shortcut in place, so a forward hook only
ever sees post-ReLU values; the block body is therefore re-run here from the block's own modules.

Weights: ``pretrained`` is torchvision's ``IMAGENET1K_V1`` (``resnet101-63fe2227.pth``, the same tensors
as the ``resnet101-5d3b4d8f.pth`` the DHPF code loads) — not V2, torchvision's current default, whose
features differ. ``random`` is a seeded initialisation for tests; a path is a torchvision state dict.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from corrbench.errors import UsageError, WeightsError
from corrbench.torchfile import load_weights_only

BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
STAGE_CHANNELS = (256, 512, 1024, 2048)
RANDOM_SEED = 0


def check_backbone(name: str) -> str:
    if name not in BLOCKS:
        raise UsageError(f"backbone {name!r} is not one of {', '.join(BLOCKS)}")
    return name


def candidate_channels(backbone: str) -> list[int]:
    """Channel count of every candidate id (64 for the stem, then each bottleneck's output)."""
    out = [64]
    for n, c in zip(BLOCKS[check_backbone(backbone)], STAGE_CHANNELS):
        out += [c] * n
    return out


def candidate_strides(backbone: str) -> list[int]:
    out = [4]
    for n, s in zip(BLOCKS[check_backbone(backbone)], (4, 8, 16, 32)):
        out += [s] * n
    return out


def map_size(load_hw: tuple[int, int], stride: int) -> tuple[int, int]:
    """Spatial size of a stride-``stride`` map: every stride-2 step maps n to ceil(n / 2)."""
    h, w = load_hw
    for _ in range(int(math.log2(stride))):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def layer_shapes(backbone: str, load_hw: tuple[int, int], ids: list[int] | None = None) -> list[tuple[int, int, int]]:
    """(C, h, w) of the chosen candidate maps for a load-frame image."""
    chans, strides = candidate_channels(backbone), candidate_strides(backbone)
    ids = list(range(len(chans))) if ids is None else ids
    return [(chans[i], *map_size(load_hw, strides[i])) for i in ids]


def how_to_get(backbone: str) -> str:
    file = {"resnet50": "resnet50-0676ba61.pth", "resnet101": "resnet101-63fe2227.pth"}[backbone]
    return (f"run once with internet access so torchvision caches https://download.pytorch.org/models/{file} "
            f"(under $TORCH_HOME/hub/checkpoints), or pass that file with backbone weights = PATH")


def build_resnet(backbone: str, weights: str) -> torch.nn.Module:
    """torchvision ResNet (eval, frozen) with ImageNet-V1, random or local weights."""
    import torchvision

    check_backbone(backbone)
    ctor = getattr(torchvision.models, backbone)
    weights = str(weights)
    if weights == "pretrained":
        enum = {"resnet50": torchvision.models.ResNet50_Weights,
                "resnet101": torchvision.models.ResNet101_Weights}[backbone].IMAGENET1K_V1
        try:
            net = ctor(weights=enum)
        except OSError as exc:  # urllib's URLError is an OSError: offline and not cached
            raise WeightsError(f"could not get the torchvision {backbone} ImageNet-V1 weights ({enum.url}): "
                               f"{type(exc).__name__}: {exc}. To fix: {how_to_get(backbone)}") from exc
    else:
        torch.manual_seed(RANDOM_SEED)
        net = ctor(weights=None)
        if weights != "random":
            path = Path(weights).expanduser()
            if not path.is_file():
                raise WeightsError(f"backbone weights {str(path)!r}: no such file ({how_to_get(backbone)})")
            sd = load_weights_only(path)  # a truncated, foreign or code-carrying file: one WeightsError naming it
            if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
                sd = sd["state_dict"]
            if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in sd.items()):
                raise WeightsError(f"{path} does not hold a state dict of named tensors "
                                   f"(a torchvision {backbone} state dict is needed)")
            expected = net.state_dict()
            missing = sorted(set(expected) - set(sd))
            unexpected = sorted(set(sd) - set(expected))
            shapes = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
            if missing or unexpected or shapes:
                raise WeightsError(f"{path} is not a torchvision {backbone} state dict: missing {missing[:8]}, "
                                   f"unexpected {unexpected[:8]}, wrong shape {shapes[:8]}")
            net.load_state_dict(sd, strict=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def candidate_maps(net: torch.nn.Module, images: torch.Tensor, ids: list[int]) -> dict[int, torch.Tensor]:
    """The requested candidate maps; the forward stops after the deepest requested id."""
    wanted = set(ids)
    last = max(wanted)
    out: dict[int, torch.Tensor] = {}
    x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
    if 0 in wanted:
        out[0] = x
    k = 0
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            k += 1
            if k > last:
                return out
            shortcut = x if block.downsample is None else block.downsample(x)
            h = block.relu(block.bn1(block.conv1(x)))
            h = block.relu(block.bn2(block.conv2(h)))
            pre = block.bn3(block.conv3(h)) + shortcut  # the tapped tensor: before the block's last ReLU
            if k in wanted:
                out[k] = pre
            x = F.relu(pre)  # not in place: ``pre`` is kept
    return out
