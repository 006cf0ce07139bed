"""The weight-free descriptors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import corrbench
from corrbench.api import FeatureGrid, Preprocess
from corrbench.options import Option

#: the square load size every classic method takes
LOAD_SIZE = Option(224, int, "square load size in pixels (the image is resized to it)", min=1)


def conv_grid(in_size: int, out_size: int, stride: int, padding: int) -> tuple[float, float]:
    """(stride, centre of cell 0) of a sliding window whose output size is known: works for any kernel."""
    patch = in_size + 2 * padding - (out_size - 1) * stride
    return float(stride), -padding + (patch - 1) / 2


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError("an odd integer ≥ 1")
    return value


class _Classic(corrbench.Descriptor):
    """The classic descriptors are weightless and fast: their tiny configuration is the default one."""

    @classmethod
    def tiny_config(cls, workdir):
        return {}


class DenseSIFT(_Classic):
    """Dense SIFT through kornia's DenseSIFTDescriptor on the grey image (RootSIFT, 4×4 spatial bins)."""

    name = "dsift"
    weight_free = True
    default_config = {
        "load_size": LOAD_SIZE,
        "bin_size": Option(4, int, "side of one of the 4×4 spatial bins in pixels; the window is 4 × bin_size", min=1),
        "stride": Option(2, int, "sampling step between descriptors in pixels", min=1),
    }
    preprocess = Preprocess(load_size=224, resize="square", resample="bilinear")

    def setup(self) -> None:
        from kornia.feature import DenseSIFTDescriptor

        self.sift = DenseSIFTDescriptor(spatial_bin_size=int(self.config["bin_size"]),
                                        stride=int(self.config["stride"]), padding=0).to(self.device)

    def extract(self, images):
        grey = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).unsqueeze(1)
        return self.sift(grey)

    def feature_grid(self, load_hw, feat_hw):
        sx, ox = conv_grid(load_hw[1], feat_hw[1], int(self.config["stride"]), 0)
        sy, oy = conv_grid(load_hw[0], feat_hw[0], int(self.config["stride"]), 0)
        return FeatureGrid(sx, sy, ox, oy)


class ColourPatch(_Classic):
    """The raw RGB values of a k×k patch centred on each pixel (zero-padded at the border)."""

    name = "colour-patch"
    weight_free = True
    default_config = {
        "load_size": LOAD_SIZE,
        "patch": Option(7, int, "side of the square patch in pixels, odd, centred on the pixel", min=1,
                        check=_odd),
        "stride": Option(2, int, "sampling step between patches in pixels", min=1),
    }
    preprocess = Preprocess(load_size=224, resize="square", resample="bilinear")

    def extract(self, images):
        k, s = int(self.config["patch"]), int(self.config["stride"])
        if k < 1 or k % 2 == 0:
            raise corrbench.UsageError(f"colour-patch.patch must be an odd positive integer, got {k}")
        B, _, H, W = images.shape
        cols = F.unfold(images, kernel_size=k, padding=k // 2, stride=s)
        h, w = (H - 1) // s + 1, (W - 1) // s + 1
        return cols.view(B, 3 * k * k, h, w)

    def feature_grid(self, load_hw, feat_hw):
        s = float(self.config["stride"])
        return FeatureGrid(s, s, 0.0, 0.0)  # cell (i, j) is centred on pixel (i·s, j·s)


class RandomConv(_Classic):
    """A randomly initialised conv3×3-ReLU-conv3×3 network (seeded): the floor for learned features."""

    name = "random-conv"
    default_config = {
        "load_size": LOAD_SIZE,
        "channels": Option(64, int, "output channels of both convolutions", min=1),
        "seed": Option(0, int, "seed of the random weights", min=0),
    }
    preprocess = Preprocess(load_size=224, resize="square", resample="bilinear")

    def setup(self) -> None:
        gen = torch.Generator().manual_seed(int(self.config["seed"]))
        c = int(self.config["channels"])
        self.w1 = (torch.randn(c, 3, 3, 3, generator=gen) / 27 ** 0.5).to(self.device)
        self.w2 = (torch.randn(c, c, 3, 3, generator=gen) / (9 * c) ** 0.5).to(self.device)

    def weights_identity(self) -> str:
        return f"random-seed{self.config['seed']}"

    def extract(self, images):
        x = F.relu(F.conv2d(images, self.w1, stride=2, padding=1))
        return F.conv2d(x, self.w2, padding=1)

    def feature_grid(self, load_hw, feat_hw):
        return FeatureGrid(2.0, 2.0, 0.0, 0.0)  # stride-2 3×3 conv with padding 1: cell j centred on pixel 2j
