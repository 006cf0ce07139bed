"""Left/right keypoint partners (``Dataset.mirror_partners``) of every dataset that knows them."""

from __future__ import annotations

import pytest

from corrbench.plugins import get_host
from corrbench.testing.datasets import CUB_PART_NAMES, SPAIR_USED_SLOTS
from corrbench_datasets._mirror import mirror_name, partners_from_names
from corrbench_datasets.ap10k import AP10K_KEYPOINTS
from corrbench_datasets.spair_mirror import SPAIR_MIRROR_PAIRS
from corrbench_synthetic.shapes import KEYPOINTS


def _dataset(name: str, tmp_path):
    return get_host().datasets.get(name)(root=tmp_path / name)


def _check_map(m: dict[str, str], valid_ids: set[str]) -> None:
    """Symmetric, no self-partner, ids of this category only, each id in one pair."""
    for a, b in m.items():
        assert isinstance(a, str) and isinstance(b, str)
        assert a != b, f"{a} is its own partner"
        assert m.get(b) == a, f"{a} → {b} but {b} → {m.get(b)}"
        assert a in valid_ids and b in valid_ids, f"{a}/{b} is not a keypoint id of this category"


@pytest.mark.parametrize("category", sorted(SPAIR_USED_SLOTS))
def test_spair_map_is_symmetric_and_uses_the_category_slots(tmp_path, category):
    m = _dataset("spair", tmp_path).mirror_partners(category)
    _check_map(m, {str(s) for s in SPAIR_USED_SLOTS[category]})
    assert len(m) == 2 * len(SPAIR_MIRROR_PAIRS[category]) > 0
    flat = [s for pair in SPAIR_MIRROR_PAIRS[category] for s in pair]
    assert len(flat) == len(set(flat)), "a slot appears in two pairs"


def test_spair_known_partners_and_unpaired_slots(tmp_path):
    ds = _dataset("spair", tmp_path)
    car, bus, bike = ds.mirror_partners("car"), ds.mirror_partners("bus"), ds.mirror_partners("bicycle")
    assert car["10"] == "20" and car["0"] == "1" and "4" not in car  # wheels, mirrors; the licence plate is central
    assert "8" not in bus and "9" not in bus and bus["28"] == "29"  # bus slots 8-9 are unused
    assert "11" not in bike and "12" not in bike and "13" not in bike
    assert ds.mirror_partners("not-a-category") == {}


@pytest.mark.parametrize("category", sorted(KEYPOINTS))
def test_synthetic_map_pairs_left_and_right_names(tmp_path, category):
    names = KEYPOINTS[category]
    m = _dataset("synthetic", tmp_path).mirror_partners(category)
    _check_map(m, {str(i) for i in range(len(names))})
    sided = [n for n in names if n.startswith(("left_", "right_"))]
    assert len(m) == len(sided)
    for a, b in m.items():
        na, nb = names[int(a)], names[int(b)]
        assert na.replace("left_", "X_").replace("right_", "X_") == nb.replace("left_", "X_").replace("right_", "X_")
        assert na != nb


def test_cub_map_from_part_names(tmp_path):
    m = _dataset("cub", tmp_path).mirror_partners("001.Black_footed_Albatross")
    _check_map(m, {str(i) for i in range(1, 16)})
    named = {CUB_PART_NAMES[int(a) - 1]: CUB_PART_NAMES[int(b) - 1] for a, b in m.items()}
    assert named == {"left eye": "right eye", "right eye": "left eye", "left leg": "right leg",
                     "right leg": "left leg", "left wing": "right wing", "right wing": "left wing"}
    # the same map for every class (CUB parts do not depend on the species)
    assert _dataset("cub", tmp_path).mirror_partners("002.Laysan_Albatross") == m


def test_ap10k_map_from_keypoint_names(tmp_path):
    m = _dataset("ap-10k", tmp_path).mirror_partners("cat")
    _check_map(m, {str(i) for i in range(17)})
    assert m == {"0": "1", "1": "0", "5": "8", "8": "5", "6": "9", "9": "6", "7": "10", "10": "7",
                 "11": "14", "14": "11", "12": "15", "15": "12", "13": "16", "16": "13"}
    assert len(AP10K_KEYPOINTS) == 17


@pytest.mark.parametrize("name", ["pf-pascal", "pf-willow", "dhf-json"])
def test_datasets_without_named_keypoints_have_no_map(tmp_path, name):
    assert _dataset(name, tmp_path).mirror_partners("cat") == {}


@pytest.mark.parametrize("name, other", [
    ("left_eye", "right_eye"), ("right foot", "left foot"), ("L_F_Paw", "R_F_Paw"), ("R_Eye", "L_Eye"),
    ("Left-Wing", "Right-Wing"), ("nose", None), ("Leftover", None), ("L", None),
])
def test_mirror_name(name, other):
    assert mirror_name(name) == other


def test_partners_from_names_ignores_unmatched_sides():
    names = {"1": "left eye", "2": "right eye", "3": "left ear", "4": "tail"}
    assert partners_from_names(names) == {"1": "2", "2": "1"}
