"""DHPF's learned part: per-layer feature transforms (CFT) and pair-conditioned gates (docs/methods.md#dhpf-and-hpf).

For every candidate layer l with C_l channels:

- ``reduction_ffns[l]`` (CFT): 1×1 conv C_l → C_l/8 without bias, BatchNorm, ReLU;
- ``gumbel_ffns[l]`` (gate): 1×1 conv C_l → 32 without bias, BatchNorm, ReLU, 1×1 conv 32 → 2 without bias.

The module names match the authors' released ``state_dict`` exactly, so it loads strictly (442 entries,
5,808,928 parameters for ResNet-101; 221 entries for ResNet-50). At test time a gate has no Gumbel
noise: layer l is selected for a pair iff logit[1] > logit[0] for v_l = GAP(f_l^src) + GAP(f_l^trg).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from corrbench.errors import WeightsError
from corrbench.torchfile import load_weights_only

#: where the authors' checkpoints are (Google Drive has no stable direct-download URL: users fetch them)
DRIVE_FOLDER = "https://drive.google.com/drive/folders/1aoKQlvHOb7vZIFK8pDJsQnC7SOyEjXVF"
CHECKPOINTS = {
    "spair-strong-res101": "https://drive.google.com/file/d/1DnsDhttMIImAcupdjuANowlgZqVSx_5E/view",
    "spair-weak-res101": "https://drive.google.com/file/d/1uDfONwSiAzDsxW9wbhdlYKf8auqAVXoM/view",
    "pfpascal-strong-res101": "https://drive.google.com/drive/folders/1QDYOxqF-BsWKjKbwLKfbcfxaS5OHlbVT",
    "pfpascal-strong-res50": "https://drive.google.com/drive/folders/1RC9EbVhk8QOjpF3NIO-tidIsKcY399S8",
    "pfpascal-weak-res101": "https://drive.google.com/drive/folders/1IjjoFgrIZzys2YDEGhLQrOg0bTG29-Pl",
    "pfpascal-weak-res50": "https://drive.google.com/drive/folders/1WykysKyy9PAsX-DpC5UuZILokCMToJWH",
}
RANDOM_SEED = 0


def how_to_get() -> str:
    return (f"download the authors' learner checkpoint (for SPair-71k: the strong-supervision ResNet-101 model, "
            f"{CHECKPOINTS['spair-strong-res101']}; all models: {DRIVE_FOLDER}) and pass it with "
            f"--set dhpf.weights=PATH (dhpf.weights=random gives an untrained learner and backbone, for tests)")


class Learner(nn.Module):
    def __init__(self, channels: list[int]):
        super().__init__()
        self.channels = list(channels)
        self.reduction_ffns = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c, c // 8, 1, bias=False), nn.BatchNorm2d(c // 8), nn.ReLU())
            for c in channels])
        self.gumbel_ffns = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 2, 1, bias=False))
            for c in channels])

    def cft(self, layer: int, fmap: torch.Tensor) -> torch.Tensor:
        return self.reduction_ffns[layer](fmap)

    def gate(self, layer: int, pooled_sum: torch.Tensor) -> bool:
        """Whether layer ``layer`` is on for a pair, from GAP(src) + GAP(trg) (a C_l vector)."""
        logits = self.gumbel_ffns[layer](pooled_sum.view(1, -1, 1, 1)).flatten()
        return bool(logits[1] > logits[0])


def build(channels: list[int], weights: str) -> Learner:
    """The learner in eval mode with the authors' checkpoint (``weights`` = path) or random init."""
    torch.manual_seed(RANDOM_SEED)
    learner = Learner(channels)
    weights = "" if weights is None else str(weights)
    if weights == "random":
        pass
    elif not weights:
        raise WeightsError(f"dhpf needs the authors' trained learner: {how_to_get()}")
    else:
        load_checkpoint(learner, Path(weights).expanduser())
    learner.eval()
    for p in learner.parameters():
        p.requires_grad_(False)
    return learner


def load_checkpoint(learner: Learner, path: Path) -> None:
    """Strict load of a released ``best_model.pt`` (legacy or zip format), naming every mismatch."""
    if not path.is_file():
        raise WeightsError(f"dhpf.weights={str(path)!r}: no such file. {how_to_get()}")
    obj = load_weights_only(path)  # a truncated, foreign or code-carrying file: one WeightsError naming it
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise WeightsError(f"{path} does not hold a state dict of named tensors")
    sd = dict(obj)
    for prefix in ("module.", "learner."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    expected = learner.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} (expected {tuple(expected[k].shape)})"
              for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        layers = {int(k.split(".")[1]) for k in sd if k.startswith("reduction_ffns.")}
        hint = (f" It holds {len(layers)} layers; dhpf.backbone=resnet101 needs 34 and resnet50 17."
                if layers and len(layers) != len(learner.channels) else "")
        parts = [f"{label}: {', '.join(items[:8])}{f' and {len(items) - 8} more' if len(items) > 8 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
                 if items]
        raise WeightsError(f"{path} is not a DHPF learner for {len(learner.channels)} candidate layers "
                           f"({len(sd)} entries, expected {len(expected)}): {'; '.join(parts)}.{hint}")
    learner.load_state_dict(sd, strict=True)
