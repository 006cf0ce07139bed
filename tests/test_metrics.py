import numpy as np
import pandas as pd
import pytest

from corrbench.metrics import ALPHAS, correct, pck_table


def _kp(dists, pair_ids, box_sides, img_sides, categories=None, **flags):
    n = len(dists)
    frame = pd.DataFrame({"pair_id": pair_ids, "dist": dists, "L_bbox": box_sides, "L_img": img_sides,
                          "category": categories or ["c"] * n})
    for k, v in flags.items():
        frame[k] = v
    return frame


def _cell(table, group="all", level="all", norm="bbox", average="point", alpha=0.1):
    row = table[(table.group == group) & (table.level == level) & (table.norm == norm)
                & (table.average == average) & (np.isclose(table.alpha, alpha))]
    assert len(row) == 1
    return float(row.value.iloc[0]), int(row.n.iloc[0])


def test_golden_box_100x50_le_and_lt():
    # target box 100×50 → L = 100, α = 0.1 → 10 px; predictions 9, 10, 11 px off
    kp = _kp([9.0, 10.0, 11.0], ["p"] * 3, [100.0] * 3, [500.0] * 3)
    assert _cell(pck_table(kp, compare="le"))[0] == pytest.approx(200 / 3)
    assert _cell(pck_table(kp, compare="lt"))[0] == pytest.approx(100 / 3)


def test_ties_are_not_decided_by_float_rounding():
    # 0.1 * 3 = 0.30000000000000004: a distance of exactly 0.3 is a tie, not a pass under "<"
    assert correct(np.array([0.3]), np.array([0.1 * 3]), "lt")[0] == np.False_
    assert correct(np.array([0.3]), np.array([0.1 * 3]), "le")[0] == np.True_


def test_img_threshold_of_a_64x48_target():
    kp = _kp([6.4, 6.5], ["p", "p"], [np.nan, np.nan], [64.0, 64.0])
    assert _cell(pck_table(kp), norm="img")[0] == pytest.approx(50.0)


def test_point_versus_image_averaging_and_counts():
    # pair a: 1 of 1 correct; pair b: 1 of 3 correct
    kp = _kp([1, 1, 50, 50], ["a", "b", "b", "b"], [100] * 4, [100] * 4)
    t = pck_table(kp)
    assert _cell(t, average="point") == (pytest.approx(50.0), 4)
    assert _cell(t, average="image") == (pytest.approx(100 * (1 + 1 / 3) / 2), 2)


def test_breakdown_by_category_and_flag_against_a_loop():
    rng = np.random.default_rng(0)
    n = 200
    kp = _kp(rng.uniform(0, 40, n), [f"p{i // 5}" for i in range(n)], rng.uniform(50, 200, n),
             rng.uniform(100, 400, n), categories=[["x", "y", "z"][i // 5 % 3] for i in range(n)],
             viewpoint_variation=[(i // 5) % 2 for i in range(n)])
    table = pck_table(kp, groups=("category", "viewpoint_variation"))
    for alpha in ALPHAS:
        for norm, col in (("bbox", "L_bbox"), ("img", "L_img")):
            for cat in "xyz":
                sub = kp[kp.category == cat]
                expected = 100 * np.mean([d <= alpha * L for d, L in zip(sub.dist, sub[col])])
                assert _cell(table, "category", cat, norm, "point", alpha)[0] == pytest.approx(expected)
                per_pair = [np.mean([d <= alpha * L for d, L in zip(g.dist, g[col])]) for _, g in sub.groupby("pair_id")]
                assert _cell(table, "category", cat, norm, "image", alpha)[0] == pytest.approx(100 * np.mean(per_pair))
            sub = kp[kp.viewpoint_variation == 1]
            expected = 100 * np.mean([d <= alpha * L for d, L in zip(sub.dist, sub[col])])
            assert _cell(table, "viewpoint_variation", 1, norm, "point", alpha)[0] == pytest.approx(expected)


def test_compare_must_be_known():
    with pytest.raises(ValueError):
        correct(np.array([1.0]), np.array([1.0]), "<=")
