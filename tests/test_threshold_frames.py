"""The PCK threshold under anisotropic resizing and padding.

Published numbers have been inflated by scoring in a stretched or padded frame (a threshold of α·max(H, W)
of the *resized* image, or distances measured after an anisotropic resize). corrbench maps predictions
back to original pixels and takes L from the original target, so the frame a method loads its images in
cannot change whether a prediction counts. These tests pin that down with hand-made geometry.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from corrbench.api import Preprocess
from corrbench.images import to_input, to_load, to_original
from corrbench.metrics import correct

SIZES = [(64, 256), (256, 64), (300, 200), (97, 41)]  # (W, H): tall, wide, mild, odd
POLICIES = ["square", "pad_square", "long_side", "short_side"]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("policy", POLICIES)
def test_load_and_original_frames_round_trip(size, policy):
    prep = Preprocess(load_size=224, resize=policy)
    hw = prep.load_hw(size)
    pts = np.array([[0.0, 0.0], [size[0] - 1, size[1] - 1], [size[0] / 3, size[1] / 2]])
    back = to_original(to_load(pts, size, hw, prep), size, hw, prep)
    np.testing.assert_allclose(back, pts, atol=1e-9)


@pytest.mark.parametrize("size", SIZES)
def test_pad_square_centres_the_image_with_its_aspect(size):
    prep = Preprocess(load_size=224, resize="pad_square")
    left, top, w, h = prep.content_box(size)
    W, H = size
    assert max(w, h) == 224 and abs(w / h - W / H) < 2 / min(w, h)  # aspect kept up to rounding
    assert (left, top) == ((224 - w) // 2, (224 - h) // 2)
    # a point is scaled isotropically (up to the integer rounding of the content size) and offset
    x, y = to_load(np.array([[W, H]], dtype=float), size, (224, 224), prep)[0]
    assert (x, y) == pytest.approx((left + w, top + h))


def test_pad_square_puts_each_pixel_where_the_points_say():
    """A marker drawn at known original pixels is found at to_load() of them in the padded input."""
    W, H = 90, 40
    img = Image.new("RGB", (W, H), (0, 0, 255))
    marks = [(10, 10), (70, 30), (45, 5)]
    for x, y in marks:
        img.putpixel((x, y), (255, 0, 0))
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                if 0 <= x + dx < W and 0 <= y + dy < H:
                    img.putpixel((x + dx, y + dy), (255, 0, 0))
    prep = Preprocess(load_size=180, resize="pad_square", resample="nearest")
    arr = to_input(img, prep)
    left, top, w, h = prep.content_box((W, H))
    assert arr[:, :top, :].max() == 0 and arr[:, top + h:, :].max() == 0  # the padding is black
    for x, y in marks:
        # pixel centres: original pixel (x, y) covers [x, x+1); its centre maps to the centre of the 2×2 block
        lx, ly = to_load(np.array([[x + 0.5, y + 0.5]]), (W, H), (180, 180), prep)[0]
        assert arr[0, int(ly), int(lx)] == pytest.approx(1.0) and arr[2, int(ly), int(lx)] == pytest.approx(0.0)


@pytest.mark.parametrize("policy", POLICIES)
def test_whether_a_prediction_counts_does_not_depend_on_the_load_frame(policy):
    """A prediction 9 px below the truth in a 64×256 target with L = 100: correct at α = 0.1 in every frame."""
    size = (64, 256)
    prep = Preprocess(load_size=224, resize=policy)
    hw = prep.load_hw(size)
    truth = np.array([[32.0, 128.0]])
    for offset, expected in ((9.0, True), (10.0, True), (10.5, False)):
        pred_load = to_load(truth + [0.0, offset], size, hw, prep)  # what a method would output
        dist = np.linalg.norm(to_original(pred_load, size, hw, prep) - truth, axis=1)
        assert bool(correct(dist, np.array([0.1 * 100.0]))[0]) is expected


def test_scoring_in_the_stretched_frame_changes_the_verdict():
    """The hazard itself: in a 64×256 image stretched to 224², a vertical error shrinks by 224/256 and a
    horizontal one grows by 224/64, so load-frame distances against the original L mis-score both ways."""
    size = (64, 256)
    prep = Preprocess(load_size=224, resize="square")
    hw = prep.load_hw(size)
    truth = np.array([[32.0, 128.0]])
    L = 0.1 * max(size)  # L_img = 25.6 px
    vertical = truth + [0.0, 28.0]  # 28 px off: a miss in original pixels...
    d_load = np.linalg.norm(to_load(vertical, size, hw) - to_load(truth, size, hw), axis=1)
    assert not correct(np.array([28.0]), np.array([L]))[0]
    assert correct(d_load, np.array([L]))[0]  # ...but a hit when measured after the stretch
    horizontal = truth + [8.0, 0.0]  # 8 px off: a hit, but 28 px in the stretched frame
    d_load = np.linalg.norm(to_load(horizontal, size, hw) - to_load(truth, size, hw), axis=1)
    assert correct(np.array([8.0]), np.array([L]))[0] and not correct(d_load, np.array([L]))[0]


def test_threshold_base_comes_from_the_target_never_the_padded_frame():
    """With pad_square, L_img stays max(W, H) of the original target (256), not the 224 canvas."""
    from corrbench.runner import _reference_lengths
    from corrbench.api import Pair

    pair = Pair("p", "a.jpg", "b.jpg", np.zeros((1, 2)), np.zeros((1, 2)), target_box=(4, 8, 54, 108))
    l_bbox, l_img = _reference_lengths(pair, (64, 256))
    assert (l_bbox, l_img) == (100.0, 256.0)
