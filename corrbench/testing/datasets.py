"""Fixture writers in the exact on-disk formats of the real datasets (docs/datasets.md#test-fixtures).

Everything is generated from a seed into a folder you choose; no real data is involved. Images have
W ≠ H so that (x, y)/(y, x) and (W, H)/(H, W) mix-ups fail loudly; one keypoint per category sits on
the right border (x = W − 1) with its bounding box ending at x2 = W, and CUB images have invisible
parts (``0.0 0.0 0``). Keypoints are drawn as discs whose colour depends only on the keypoint id, so
even weight-free descriptors can find some of the correspondences.

Writers return a record of what they wrote (the annotation objects themselves), which tests use as
the independent ground truth for the readers.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# Image sizes (W, H), all non-square, cycled over the generated images.
SIZES = ((64, 48), (40, 72), (56, 44), (48, 60), (72, 40), (44, 52))
POSES = ("Unspecified", "Frontal", "Left", "Rear", "Right")
# Used keypoint slots per category (docs/datasets.md#spair-71k); the fixture draws from the first few.
SPAIR_USED_SLOTS = {
    "aeroplane": range(25), "bicycle": [i for i in range(14) if i not in (11, 12)], "bird": range(17),
    "boat": range(14), "bottle": range(10), "bus": [i for i in range(30) if i not in (8, 9)], "car": range(30),
    "cat": range(15), "chair": range(14), "cow": range(21), "dog": range(16), "horse": range(20),
    "motorbike": range(13), "person": range(20), "pottedplant": range(9), "sheep": range(21), "train": range(18),
    "tvmonitor": range(16),
}
CUB_PART_NAMES = ("back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing",
                  "nape", "right eye", "right leg", "right wing", "tail", "throat")


def _colour(k: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per keypoint id (golden-ratio hue walk)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.9, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_image(path: Path, size: tuple[int, int], kps: dict[int, tuple[float, float]], background: int,
               fmt: str = "JPEG") -> None:
    """Solid background plus a disc of id-dependent colour at each keypoint."""
    from PIL import Image, ImageDraw

    W, H = size
    img = Image.new("RGB", (W, H), (background, background // 2, 255 - background))
    draw = ImageDraw.Draw(img)
    for k, (x, y) in sorted(kps.items()):
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=_colour(k))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def write_json(path: Path, obj: Any) -> str:
    """Write ``obj`` as JSON; returns the sha256 of the bytes written."""
    data = json.dumps(obj, indent=None).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _points_box(rng: np.random.Generator, size: tuple[int, int], slots: Sequence[int], n_visible: int,
                border: bool) -> tuple[dict[int, tuple[int, int]], list[int]]:
    """Integer keypoints on ``n_visible`` of ``slots`` and a VOC-style box around them."""
    W, H = size
    chosen = sorted(int(s) for s in rng.choice(np.asarray(slots), size=n_visible, replace=False))
    kps: dict[int, tuple[int, int]] = {}
    for s in chosen:
        kps[s] = (int(rng.integers(4, W - 4)), int(rng.integers(4, H - 4)))
    if border:  # a keypoint on the last pixel column; its box then ends at x2 = W (VOC 1-based inclusive)
        kps[chosen[0]] = (W - 1, kps[chosen[0]][1])
    xs = [p[0] for p in kps.values()]
    ys = [p[1] for p in kps.values()]
    bbox = [max(0, min(xs) - 2), max(0, min(ys) - 2), min(W, max(xs) + 2), min(H, max(ys) + 2)]
    return kps, bbox


# ------------------------------------------------------------------------------------------
# SPair-71k
# ------------------------------------------------------------------------------------------
@dataclass
class SpairImageRecord:
    category: str
    name: str  # "2008_100000.jpg"
    size: tuple[int, int]  # (W, H)
    bbox: list[int]
    kps: dict[int, tuple[int, int]]  # visible slots only
    split: str
    pose: str


@dataclass
class SpairFixture:
    root: Path
    images: dict[tuple[str, str], SpairImageRecord] = field(default_factory=dict)
    #: split → [(stem, pair annotation object)] in Layout order
    pairs: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)

    def pair(self, split: str, stem: str) -> dict[str, Any]:
        return dict(self.pairs[split])[stem]


def write_spair_fixture(root: str | os.PathLike, *, categories: Sequence[str] = ("cat", "bus"),
                        images_per_split: dict[str, int] | None = None, seed: int = 0,
                        slots_per_category: int = 8, visible: tuple[int, int] = (5, 7)) -> SpairFixture:
    """Write a tiny SPair-71k in its exact layout (docs/datasets.md#spair-71k).

    Each split gets its own images (disjoint across splits); every ordered pair of distinct images of
    one category and split with at least one mutually visible keypoint becomes a pair file.
    """
    from PIL import Image

    root = Path(root)
    per_split = images_per_split or {"trn": 2, "val": 2, "test": 3}
    rng = np.random.default_rng(seed)
    fx = SpairFixture(root=root)
    counter = 0
    for cat in categories:
        slots = list(SPAIR_USED_SLOTS.get(cat, range(15)))[:slots_per_category]
        first = True
        for split, n_img in per_split.items():
            for _ in range(n_img):
                size = SIZES[counter % len(SIZES)]
                name = f"{2008 + counter % 4}_{100000 + 37 * counter:06d}.jpg"
                n_vis = int(rng.integers(visible[0], visible[1] + 1))
                n_vis = min(n_vis, len(slots) - 1)  # at least one used slot is invisible (null)
                kps, bbox = _points_box(rng, size, slots, n_vis, border=first)
                first = False
                rec = SpairImageRecord(cat, name, size, bbox, kps, split, POSES[int(rng.integers(len(POSES)))])
                fx.images[(cat, name)] = rec
                draw_image(root / "JPEGImages" / cat / name, size, kps, background=40 + (counter * 29) % 160)
                stem = name[:-4]
                write_json(root / "ImageAnnotation" / cat / f"{stem}.json", {
                    "filename": name, "src_database": "fixture", "src_annotation": "fixture",
                    "src_image": "fixture", "image_width": size[0], "image_height": size[1], "image_depth": 3,
                    "category": cat, "pose": rec.pose, "truncated": 0, "occluded": 0, "difficult": 0,
                    "bndbox": bbox, "kps": {str(i): (list(kps[i]) if i in kps else None) for i in range(30)},
                    "azimuth_id": int(rng.integers(0, 8)),
                })
                mask = Image.new("L", size, 0)
                mask.paste(SPAIR_CATEGORY_INDEX.get(cat, 1), tuple(bbox))
                (root / "Segmentation" / cat).mkdir(parents=True, exist_ok=True)
                mask.save(root / "Segmentation" / cat / f"{stem}.png")
                counter += 1
    (root / "devkit").mkdir(parents=True, exist_ok=True)

    idx = 0
    for split in per_split:
        fx.pairs[split] = []
        for cat in categories:
            recs = [r for r in fx.images.values() if r.category == cat and r.split == split]
            for a in recs:
                for b in recs:
                    if a is b:
                        continue
                    mutual = sorted(set(a.kps) & set(b.kps))
                    if not mutual:
                        continue
                    idx += 1
                    stem = f"{idx:06d}-{a.name[:-4]}-{b.name[:-4]}:{cat}"
                    obj = {
                        "pair_id": idx, "src_imname": a.name, "trg_imname": b.name,
                        "src_imsize": [a.size[0], a.size[1], 3], "trg_imsize": [b.size[0], b.size[1], 3],
                        "src_bndbox": a.bbox, "trg_bndbox": b.bbox, "src_pose": a.pose, "trg_pose": b.pose,
                        "category": cat,
                        "src_kps": [list(a.kps[s]) for s in mutual], "trg_kps": [list(b.kps[s]) for s in mutual],
                        "kps_ids": [str(s) for s in mutual], "mirror": 0,
                        "viewpoint_variation": int(rng.integers(0, 3)), "scale_variation": int(rng.integers(0, 3)),
                        "truncation": int(rng.integers(0, 4)), "occlusion": int(rng.integers(0, 4)),
                    }
                    write_json(root / "PairAnnotation" / split / f"{stem}.json", obj)
                    fx.pairs[split].append((stem, obj))
        text = "".join(f"{stem}\n" for stem, _ in fx.pairs[split])
        for layout in ("large", "small"):
            (root / "Layout" / layout).mkdir(parents=True, exist_ok=True)
            (root / "Layout" / layout / f"{split}.txt").write_text(text, encoding="utf-8")
    return fx


SPAIR_CATEGORY_INDEX = {c: i + 1 for i, c in enumerate(sorted(SPAIR_USED_SLOTS))}


# ------------------------------------------------------------------------------------------
# DHF annotation JSON
# ------------------------------------------------------------------------------------------
def spair_pair_to_dhf(obj: dict[str, Any], style: str = "360") -> dict[str, Any]:
    """Map one SPair pair annotation to a DHF-schema entry (docs/datasets.md#dhf-json-pair-lists).

    ``style="360"``: paths ``<category>/<imname>`` (test-360 / val-360). ``style="test-6"``: bare file
    names plus the pose, mirror and viewpoint keys.
    """
    cat = obj["category"]
    entry: dict[str, Any] = {
        "source_path": obj["src_imname"] if style == "test-6" else f"{cat}/{obj['src_imname']}",
        "target_path": obj["trg_imname"] if style == "test-6" else f"{cat}/{obj['trg_imname']}",
        "source_points": [list(p) for p in obj["src_kps"]],
        "target_points": [list(p) for p in obj["trg_kps"]],
        "category": cat,
        "target_bounding_box": list(obj["trg_bndbox"]),
        "source_bounding_box": list(obj["src_bndbox"]),
    }
    if style == "test-6":
        entry.update(source_pose=obj["src_pose"], target_pose=obj["trg_pose"], mirror=obj["mirror"],
                     viewpoint_variation=obj["viewpoint_variation"])
    return entry


def dhf_list_from_spair(fx: SpairFixture, split: str = "test", *, per_category: int = 20, seed: int = 0,
                        style: str = "360") -> list[dict[str, Any]]:
    """A DHF-style subset: up to ``per_category`` pairs of each category, sampled without replacement,
    categories in contiguous blocks (as in the published lists)."""
    rng = np.random.default_rng(seed)
    out = []
    cats = sorted({obj["category"] for _, obj in fx.pairs[split]})
    for cat in [cats[i] for i in rng.permutation(len(cats))]:
        objs = [obj for _, obj in fx.pairs[split] if obj["category"] == cat]
        take = rng.permutation(len(objs))[:per_category]
        out.extend(spair_pair_to_dhf(objs[i], style) for i in take)
    return out


# ------------------------------------------------------------------------------------------
# CUB-200-2011
# ------------------------------------------------------------------------------------------
CUB_CLASS_NAMES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross",
                   "004.Groove_billed_Ani", "005.Crested_Auklet", "006.Least_Auklet")


@dataclass
class CubImageRecord:
    id: int
    path: str  # relative to images/
    class_id: int
    size: tuple[int, int]  # (W, H)
    box_xywh: tuple[float, float, float, float]
    parts: dict[int, tuple[float, float, int]]  # part id (1-based) → (x, y, visible); all 15 present
    train: bool

    @property
    def category(self) -> str:
        return self.path.split("/", 1)[0]

    def visible(self) -> dict[int, tuple[float, float]]:
        return {p: (x, y) for p, (x, y, v) in self.parts.items() if v}


@dataclass
class CubFixture:
    root: Path
    images: dict[int, CubImageRecord] = field(default_factory=dict)


def write_cub_fixture(root: str | os.PathLike, *, classes: int = 3, train_per_class: int = 2,
                      test_per_class: int = 2, seed: int = 0) -> CubFixture:
    """Write a tiny CUB-200-2011 in its exact layout (docs/datasets.md#cub-200-2011).

    1-based contiguous ids; train and test images interleaved within each class; 15 part lines per
    image in image-then-part order with at least one invisible part (``0.0 0.0 0``) per image; one
    part on the right border with its box ending at x + w = W; numbers written with one decimal.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    fx = CubFixture(root=root)
    image_id = 0
    for c in range(classes):
        cls_name = CUB_CLASS_NAMES[c] if c < len(CUB_CLASS_NAMES) else f"{c + 1:03d}.Fixture_Bird_{c + 1}"
        stem = cls_name.split(".", 1)[1]
        quota = {True: train_per_class, False: test_per_class}
        k = 0
        while quota[True] or quota[False]:
            train = bool(k % 2) if quota[True] and quota[False] else bool(quota[True])
            quota[train] -= 1
            image_id += 1
            size = SIZES[image_id % len(SIZES)]
            W, H = size
            n_vis = int(rng.integers(8, 14))  # of 15: always at least one invisible part
            kps, bbox = _points_box(rng, size, list(range(1, 16)), n_vis, border=(k == 0))
            parts = {p: (float(kps[p][0]), float(kps[p][1]), 1) if p in kps else (0.0, 0.0, 0)
                     for p in range(1, 16)}
            box = (float(bbox[0]), float(bbox[1]), float(bbox[2] - bbox[0]), float(bbox[3] - bbox[1]))
            rel = f"{cls_name}/{stem}_{k + 1:04d}_{image_id}.jpg"
            fx.images[image_id] = CubImageRecord(image_id, rel, c + 1, size, box, parts, train)
            draw_image(root / "images" / rel, size, {p: xy for p, xy in kps.items()},
                       background=30 + (image_id * 41) % 180)
            k += 1
    recs = [fx.images[i] for i in sorted(fx.images)]

    def lines(rows) -> str:
        return "".join(" ".join(str(v) for v in row) + "\n" for row in rows)

    (root / "parts").mkdir(parents=True, exist_ok=True)
    (root / "attributes").mkdir(parents=True, exist_ok=True)
    (root / "images.txt").write_text(lines((r.id, r.path) for r in recs))
    (root / "classes.txt").write_text(lines((i + 1, CUB_CLASS_NAMES[i] if i < len(CUB_CLASS_NAMES)
                                             else f"{i + 1:03d}.Fixture_Bird_{i + 1}") for i in range(classes)))
    (root / "image_class_labels.txt").write_text(lines((r.id, r.class_id) for r in recs))
    (root / "train_test_split.txt").write_text(lines((r.id, int(r.train)) for r in recs))
    (root / "bounding_boxes.txt").write_text(lines((r.id, *(f"{v:.1f}" for v in r.box_xywh)) for r in recs))
    (root / "parts" / "parts.txt").write_text(lines((i + 1, n) for i, n in enumerate(CUB_PART_NAMES)))
    (root / "parts" / "part_locs.txt").write_text(lines(
        (r.id, p, f"{x:.1f}", f"{y:.1f}", v) for r in recs for p, (x, y, v) in sorted(r.parts.items())))
    (root / "parts" / "part_click_locs.txt").write_text(lines(
        (r.id, p, f"{x:.1f}", f"{y:.1f}", v, f"{1 + (r.id * p) % 7 + 0.329:.3f}")
        for r in recs for p, (x, y, v) in sorted(r.parts.items())))
    return fx


# ------------------------------------------------------------------------------------------
# Loopback HTTP server with Range support (download tests)
# ------------------------------------------------------------------------------------------
class LoopbackServer:
    """Serve in-memory files on ``127.0.0.1`` from a thread, honouring single ``Range: bytes=a-`` headers.

    ``files`` maps URL paths (``/SPair-71k.tar.gz``) to bytes. ``fail_after`` maps a path to a byte
    count after which the first full response is cut off (to test resuming). ``requests`` records
    ``(path, range header)`` for every GET. Use as a context manager.
    """

    def __init__(self, files: dict[str, bytes] | None = None, *, honour_range: bool = True):
        self.files: dict[str, bytes] = dict(files or {})
        self.fail_after: dict[str, int] = {}
        self.honour_range = honour_range
        self.requests: list[tuple[str, str | None]] = []
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "LoopbackServer":
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                rng = self.headers.get("Range")
                outer.requests.append((path, rng))
                data = outer.files.get(path)
                if data is None:
                    self.send_error(404, "not found")
                    return
                start = 0
                if rng and outer.honour_range:
                    spec = rng.strip()
                    if not spec.startswith("bytes=") or not spec[6:].split("-")[0].isdigit():
                        self.send_error(400, "bad range")
                        return
                    start = int(spec[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes" if outer.honour_range else "none")
                self.end_headers()
                cut = outer.fail_after.pop(path, None)
                try:
                    if cut is not None:  # simulate a dropped connection after `cut` bytes
                        self.wfile.write(body[:cut])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: not a server error
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
