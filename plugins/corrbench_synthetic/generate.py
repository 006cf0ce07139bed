"""Render the synthetic benchmark and write it in the SPair-71k layout (docs/datasets.md#spair-71k).

Everything derives from one seed, so the same files come out on every machine: an instance's
proportions and colours, its pose (in-plane rotation, mirroring for side-view categories), scale,
position, a texture that moves with the object, and a cluttered background. Pairs carry SPair's
difficulty flags computed from the two poses: ``viewpoint_variation`` (0 similar, 1 rotated ≥ 15°,
2 facing opposite ways) and ``scale_variation`` (0/1/2 for box size ratios < 1.3, < 1.7, larger).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .shapes import BUILDERS, KEYPOINTS, semantic_name

GENERATOR_VERSION = 1
CATEGORIES = ("bird", "car", "fish", "robot")
SPLIT_SIZES = {"trn": 8, "val": 3, "test": 6}  # images per category and split (disjoint)
NUM_SLOTS = 30  # SPair ImageAnnotation has keys "0" … "29"


@dataclass
class Rendered:
    stem: str
    category: str
    size: tuple[int, int]
    bbox: list[int]
    kps: dict[int, list[int]]  # id → [x, y]
    pose: str
    angle: float
    facing_right: bool


def _affine(angle: float, scale: float, mirror: bool, centre: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    m = np.array([[c, -s], [s, c]]) @ np.diag([-scale if mirror else scale, scale])
    # canonical y is up; image y is down
    m = np.diag([1.0, -1.0]) @ m
    return np.concatenate([m, np.array(centre, dtype=np.float64)[:, None]], axis=1)


def _apply(aff: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ aff[:, :2].T + aff[:, 2]


def _background(rng: np.random.Generator, W: int, H: int) -> Image.Image:
    c0, c1 = rng.integers(40, 220, 3), rng.integers(40, 220, 3)
    t = np.linspace(0, 1, W)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, H)[:, None, None]
    img = (c0 * (1 - t) + c1 * t) * np.ones((H, W, 1))
    img = img + rng.normal(0, 6, (H, W, 3))
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 10))):  # clutter: shapes of the same kinds as object parts
        x, y = rng.uniform(0, W), rng.uniform(0, H)
        r = rng.uniform(4, min(W, H) * 0.18)
        fill = tuple(int(v) for v in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            draw.ellipse([x - r, y - r * rng.uniform(0.4, 1), x + r, y + r * rng.uniform(0.4, 1)], fill=fill)
        else:
            a = rng.uniform(0, math.pi)
            pts = [(x + r * math.cos(a + k * 2.1), y + r * math.sin(a + k * 2.1)) for k in range(3)]
            draw.polygon(pts, fill=fill)
    return image


def _texture(rng: np.random.Generator, aff: np.ndarray, W: int, H: int, base: tuple[int, int, int]) -> np.ndarray:
    """An H×W×3 texture defined in the object frame (so it moves and turns with the object)."""
    inv = np.linalg.inv(np.vstack([aff, [0, 0, 1]]))[:2]
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    u = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    v = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    kind = rng.integers(0, 3)
    other = np.array(base) * rng.uniform(0.45, 0.8)
    if kind == 0:  # plain with mild shading
        pattern = 0.15 * v
        return np.clip(np.array(base) * (1 + pattern[..., None]), 0, 255)
    if kind == 1:  # stripes
        a, f = rng.uniform(0, math.pi), rng.uniform(10, 22)
        on = np.sin(f * (u * math.cos(a) + v * math.sin(a))) > 0
    else:  # spots
        f = rng.uniform(9, 16)
        on = (np.sin(f * u) * np.sin(f * v)) > 0.45
    return np.where(on[..., None], other, np.array(base)).astype(np.float64)


def render(rng: np.random.Generator, category: str, stem: str) -> tuple[Image.Image, Image.Image, Rendered]:
    inst = BUILDERS[category](rng)
    W, H = int(rng.integers(150, 230)), int(rng.integers(130, 210))
    while H == W:
        H = int(rng.integers(130, 210))
    mirror = bool(inst.sided and rng.random() < 0.4)
    angle = math.radians(rng.uniform(-30, 30))
    scale = rng.uniform(0.22, 0.45) * min(W, H)
    all_pts = np.concatenate([p.points for p in inst.parts] + [np.array(list(inst.keypoints.values()))])
    for _ in range(50):  # place the object fully inside the image
        aff = _affine(angle, scale, mirror, (0.0, 0.0))
        pts = _apply(aff, all_pts)
        lo, hi = pts.min(0), pts.max(0)
        if (hi - lo)[0] < W - 4 and (hi - lo)[1] < H - 4:
            break
        scale *= 0.9
    cx = rng.uniform(2 - lo[0], W - 3 - hi[0])
    cy = rng.uniform(2 - lo[1], H - 3 - hi[1])
    aff = _affine(angle, scale, mirror, (cx, cy))

    image = _background(rng, W, H)
    mask = Image.new("L", (W, H), 0)
    draw, mdraw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    for part in inst.parts:
        poly = [tuple(p) for p in _apply(aff, part.points)]
        if part.textured:
            tex = Image.fromarray(_texture(rng, aff, W, H, part.colour).astype(np.uint8))
            pmask = Image.new("L", (W, H), 0)
            ImageDraw.Draw(pmask).polygon(poly, fill=255)
            image.paste(tex, (0, 0), pmask)
        else:
            draw.polygon(poly, fill=part.colour)
        mdraw.polygon(poly, fill=255)

    facing_right = not mirror
    ids = KEYPOINTS[category]
    kps: dict[int, list[int]] = {}
    for name, xy in inst.keypoints.items():
        x, y = _apply(aff, np.array([xy]))[0]
        x, y = int(round(x)), int(round(y))
        if 0 <= x < W and 0 <= y < H:
            kps[ids.index(semantic_name(name, facing_right))] = [x, y]
    ys, xs = np.nonzero(np.asarray(mask) > 0)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    pose = "Frontal" if not inst.sided else ("Right" if facing_right else "Left")
    return image, mask, Rendered(stem, category, (W, H), bbox, kps, pose, angle, facing_right)


def _flags(a: Rendered, b: Rendered) -> dict[str, int]:
    turn = abs(math.degrees(a.angle - b.angle))
    viewpoint = 2 if a.facing_right != b.facing_right else (1 if turn >= 15 else 0)
    side_a = max(a.bbox[2] - a.bbox[0], a.bbox[3] - a.bbox[1])
    side_b = max(b.bbox[2] - b.bbox[0], b.bbox[3] - b.bbox[1])
    ratio = max(side_a, side_b) / max(1, min(side_a, side_b))
    scale = 0 if ratio < 1.3 else (1 if ratio < 1.7 else 2)
    return {"viewpoint_variation": viewpoint, "scale_variation": scale, "truncation": 0, "occlusion": 0}


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_dataset(root: Path, seed: int = 0) -> dict[str, int]:
    """Generate the benchmark under ``root`` (an SPair-71k-layout folder). Returns pair counts per split."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = {}
    pair_idx = 0
    layouts: dict[str, list[str]] = {s: [] for s in SPLIT_SIZES}
    (root / "devkit").mkdir(parents=True, exist_ok=True)
    for ci, category in enumerate(CATEGORIES):
        n = 0
        for split, size in SPLIT_SIZES.items():
            rendered = []
            for _ in range(size):
                stem = f"{2000 + ci}_{n:06d}"
                n += 1
                image, mask, r = render(rng, category, stem)
                (root / "JPEGImages" / category).mkdir(parents=True, exist_ok=True)
                image.save(root / "JPEGImages" / category / f"{stem}.jpg", quality=92)
                (root / "Segmentation" / category).mkdir(parents=True, exist_ok=True)
                mask.save(root / "Segmentation" / category / f"{stem}.png")
                _dump(root / "ImageAnnotation" / category / f"{stem}.json", {
                    "filename": f"{stem}.jpg", "src_database": "corrbench-synthetic",
                    "src_annotation": f"generator v{GENERATOR_VERSION}", "src_image": f"seed {seed}",
                    "image_width": r.size[0], "image_height": r.size[1], "image_depth": 3,
                    "category": category, "pose": r.pose, "truncated": 0, "occluded": 0, "difficult": 0,
                    "bndbox": r.bbox, "kps": {str(k): r.kps.get(k) for k in range(NUM_SLOTS)},
                    "azimuth_id": 0 if r.pose == "Frontal" else (2 if r.facing_right else 6),
                })
                rendered.append(r)
            for a, b in permutations(rendered, 2):
                mutual = sorted(set(a.kps) & set(b.kps))
                if not mutual:
                    continue
                pair_stem = f"{pair_idx:06d}-{a.stem}-{b.stem}:{category}"
                _dump(root / "PairAnnotation" / split / f"{pair_stem}.json", {
                    "pair_id": pair_idx, "src_imname": f"{a.stem}.jpg", "trg_imname": f"{b.stem}.jpg",
                    "src_imsize": [*a.size, 3], "trg_imsize": [*b.size, 3],
                    "src_bndbox": a.bbox, "trg_bndbox": b.bbox, "src_pose": a.pose, "trg_pose": b.pose,
                    "category": category, "src_kps": [a.kps[k] for k in mutual], "trg_kps": [b.kps[k] for k in mutual],
                    "kps_ids": [str(k) for k in mutual], "mirror": 0, **_flags(a, b),
                })
                layouts[split].append(pair_stem)
                pair_idx += 1
    for split, stems in layouts.items():
        for size in ("large", "small"):
            path = root / "Layout" / size / f"{split}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(s + "\n" for s in stems))
        counts[split] = len(stems)
    return counts
