import pytest
import torch

from corrbench.api import FeatureGrid
from corrbench.readout import (nn_transfer, nn_transfer_naive, sample_points, source_pixels, target_norms,
                               upsample_reference)

CASES = [
    # C, h, w, load (H, W), grid (None = cells tile the image)
    (16, 13, 17, (224, 224), None),
    (32, 64, 64, (224, 224), None),  # the DHF case: 64 → 224
    (8, 20, 15, (96, 80), FeatureGrid(4, 4, 3.5, 3.5)),
    (8, 27, 27, (224, 224), FeatureGrid.patches(8, 8)),  # a ViT-S/8 grid
    (5, 9, 9, (40, 50), FeatureGrid(2, 2, 0, 0)),
    (3, 1, 1, (10, 12), None),  # a single cell
]


@pytest.mark.parametrize("C,h,w,load_hw,grid", CASES)
def test_fast_readout_equals_naive(C, h, w, load_hw, grid):
    gen = torch.Generator().manual_seed(C * h + w)
    src, tgt = torch.randn(C, h, w, generator=gen), torch.randn(C, h, w, generator=gen)
    g = grid or FeatureGrid.spanning(load_hw, (h, w))
    H, W = load_hw
    pts = torch.rand(40, 2, generator=gen) * torch.tensor([W + 6.0, H + 6.0]) - 3  # some outside: clipped
    fast = nn_transfer(src, tgt, g, g, load_hw, load_hw, pts)
    naive = nn_transfer_naive(src, tgt, g, g, load_hw, load_hw, pts)
    if h * w > 1:
        assert torch.equal(fast, naive)
    # the pieces, against torch's own interpolate / grid_sample
    ref = upsample_reference(tgt, g, load_hw)
    assert torch.allclose(target_norms(tgt, g, load_hw), ref.norm(dim=0), rtol=1e-10, atol=1e-10)
    px = source_pixels(pts, load_hw)
    s_ref = upsample_reference(src, g, load_hw)[:, px[:, 1], px[:, 0]].T
    assert torch.allclose(sample_points(src, g, load_hw, px), s_ref, rtol=1e-10, atol=1e-10)


def test_different_source_and_target_sizes():
    gen = torch.Generator().manual_seed(1)
    src, tgt = torch.randn(6, 10, 14, generator=gen), torch.randn(6, 12, 9, generator=gen)
    s_hw, t_hw = (60, 84), (72, 54)
    sg, tg = FeatureGrid.spanning(s_hw, (10, 14)), FeatureGrid.spanning(t_hw, (12, 9))
    pts = torch.rand(25, 2, generator=gen) * torch.tensor([84.0, 60.0])
    assert torch.equal(nn_transfer(src, tgt, sg, tg, s_hw, t_hw, pts),
                       nn_transfer_naive(src, tgt, sg, tg, s_hw, t_hw, pts))


def test_identical_images_map_points_to_themselves():
    # a map with a unique descriptor per cell (one-hot) at full resolution: NN must find the same pixel
    h = w = 12
    fmap = torch.eye(h * w).reshape(h * w, h, w)
    g = FeatureGrid.spanning((h, w), (h, w))
    pts = torch.tensor([[0.0, 0.0], [11.0, 11.0], [3.2, 7.7], [6.5, 2.4]])
    out = nn_transfer(fmap, fmap, g, g, (h, w), (h, w), pts)
    assert torch.equal(out, source_pixels(pts, (h, w)).double())


def test_channel_mismatch_is_an_error():
    g = FeatureGrid.spanning((8, 8), (4, 4))
    with pytest.raises(ValueError, match="channels"):
        nn_transfer(torch.randn(3, 4, 4), torch.randn(4, 4, 4), g, g, (8, 8), (8, 8), torch.zeros(1, 2))


@pytest.mark.parametrize("C,h,w,load_hw,grid", CASES[:3])
def test_margins_leave_the_predictions_alone_and_match_the_dense_cosine_map(C, h, w, load_hw, grid):
    from corrbench.readout import match_margins

    gen = torch.Generator().manual_seed(7 * C + h)
    src, tgt = torch.randn(C, h, w, generator=gen), torch.randn(C, h, w, generator=gen)
    g = grid or FeatureGrid.spanning(load_hw, (h, w))
    H, W = load_hw
    pts = torch.rand(20, 2, generator=gen) * torch.tensor([W - 1.0, H - 1.0])
    plain = nn_transfer(src, tgt, g, g, load_hw, load_hw, pts)
    pred, margins = nn_transfer(src, tgt, g, g, load_hw, load_hw, pts, return_margin=True)
    assert torch.equal(pred, plain) and margins.shape == (20, 2) and margins.dtype == torch.float64
    # the reference: true cosines of the upsampled maps, then top-1 minus top-2 / minus the best pixel
    # more than one pixel (Chebyshev) from the argmax
    px = source_pixels(pts, load_hw)
    s = torch.nn.functional.normalize(upsample_reference(src, g, load_hw)[:, px[:, 1], px[:, 0]].T, dim=1)
    cos = (s @ torch.nn.functional.normalize(upsample_reference(tgt, g, load_hw).reshape(C, -1), dim=0))
    for i in range(len(pts)):
        row = cos[i].reshape(H, W)
        x, y = int(pred[i, 0]), int(pred[i, 1])
        top2 = row.flatten().topk(2).values
        far = row.clone()
        far[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = -float("inf")
        assert margins[i, 0].item() == pytest.approx((top2[0] - top2[1]).item(), abs=1e-9)
        assert margins[i, 1].item() == pytest.approx((row[y, x] - far.max()).item(), abs=1e-9)
        assert 0 <= margins[i, 0] <= margins[i, 1]
    # no competitor farther than a pixel (the best in the middle of a 3×3 map, or a single pixel)
    m3 = torch.rand(2, 3, 3)
    m3[:, 1, 1] = 2.0
    assert torch.isinf(match_margins(m3)[:, 1]).all() and (match_margins(m3)[:, 0] > 0).all()
    assert torch.isinf(match_margins(torch.rand(2, 1, 1))).all()
