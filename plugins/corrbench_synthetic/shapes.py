"""Procedural object categories: parts drawn in a canonical frame, semantic keypoints on them.

Each category builder returns the parts (back to front) and the keypoints of one instance in a
canonical frame (x to the front of the object, y up, the object within about [-1, 1]²). Instances
differ in part proportions and colours; the dataset module adds pose, scale, texture and clutter.

Side-view categories face +x, so the viewer sees their *left* side: near parts carry "left" ids. An
instance drawn mirrored faces the other way and shows its *right* side, so the near parts are then
labelled "right" — the left/right ambiguity real benchmarks (SPair-71k viewpoint variation) test.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Part:
    points: np.ndarray  # K×2 polygon in the canonical frame
    colour: tuple[int, int, int]
    textured: bool = False  # the instance texture is applied inside this part


@dataclass
class Instance:
    parts: list[Part]
    keypoints: dict[str, tuple[float, float]]  # canonical name ("near_*" / "far_*" for sided parts)
    sided: bool = True  # False: frontal objects, not mirrored
    extra: dict = field(default_factory=dict)


def ellipse(cx, cy, rx, ry, n=40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def poly(*pts) -> np.ndarray:
    return np.asarray(pts, dtype=np.float64)


def rect(x0, y0, x1, y1) -> np.ndarray:
    return poly((x0, y0), (x1, y0), (x1, y1), (x0, y1))


def hsv(h, s, v) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return int(r * 255), int(g * 255), int(b * 255)


def shade(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(v * f, 0, 255)) for v in c)  # type: ignore[return-value]


def _palette(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]:
    h = rng.random()
    body = hsv(h, rng.uniform(0.35, 0.9), rng.uniform(0.45, 0.95))
    accent = hsv(h + rng.uniform(0.25, 0.75), rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
    dark = hsv(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.08, 0.3))
    return body, accent, dark


def bird(rng: np.random.Generator) -> Instance:
    body, accent, dark = _palette(rng)
    L, Hh = rng.uniform(0.45, 0.62), rng.uniform(0.26, 0.36)  # body half length / height
    hr = rng.uniform(0.15, 0.22)
    hx, hy = L * 0.95, Hh * 0.85
    beak = rng.uniform(0.18, 0.3)
    tail = rng.uniform(0.3, 0.45)
    wing = rng.uniform(0.45, 0.7)
    leg = rng.uniform(0.25, 0.4)
    parts = [
        Part(poly((-0.1, Hh * 0.7), (-0.1 - wing, Hh * 0.7 + 0.35), (0.15, Hh * 0.9)), shade(body, 0.6)),  # far wing
        Part(poly((-0.05, -Hh * 0.8), (-0.02, -Hh - leg), (0.05, -Hh * 0.8)), shade(dark, 0.8)),  # far leg
        Part(poly((-L * 0.8, 0.05), (-L - tail, Hh * 0.6), (-L - tail * 0.9, -Hh * 0.4)), accent),  # tail
        Part(ellipse(0, 0, L, Hh), body, textured=True),
        Part(ellipse(hx, hy, hr, hr), body),
        Part(poly((hx + hr * 0.8, hy + hr * 0.25), (hx + hr + beak, hy), (hx + hr * 0.8, hy - hr * 0.3)), accent),
        Part(ellipse(hx + hr * 0.35, hy + hr * 0.3, hr * 0.22, hr * 0.22, 16), dark),
        Part(poly((0.25, Hh * 0.3), (-wing, Hh * 0.45), (-0.1, -Hh * 0.35)), shade(body, 1.25)),  # near wing
        Part(poly((0.12, -Hh * 0.8), (0.16, -Hh - leg), (0.22, -Hh * 0.8)), dark),  # near leg
    ]
    kps = {
        "beak_tip": (hx + hr + beak, hy), "eye": (hx + hr * 0.35, hy + hr * 0.3), "crown": (hx, hy + hr),
        "tail_tip": (-L - tail, Hh * 0.6), "breast": (L * 0.6, -Hh * 0.6),
        "near_wing_tip": (-wing, Hh * 0.45), "far_wing_tip": (-0.1 - wing, Hh * 0.7 + 0.35),
        "near_foot": (0.16, -Hh - leg), "far_foot": (-0.02, -Hh - leg),
    }
    return Instance(parts, kps)


def car(rng: np.random.Generator) -> Instance:
    body, accent, dark = _palette(rng)
    L, top = rng.uniform(0.8, 0.95), rng.uniform(0.05, 0.2)
    bottom = -rng.uniform(0.2, 0.3)
    roof = top + rng.uniform(0.25, 0.4)
    cab0, cab1 = -rng.uniform(0.3, 0.55), rng.uniform(0.2, 0.45)
    wr = rng.uniform(0.15, 0.22)
    wx = L * rng.uniform(0.55, 0.7)
    glass = hsv(0.55 + rng.uniform(-0.05, 0.05), 0.25, rng.uniform(0.6, 0.9))
    parts = [
        Part(ellipse(wx + 0.08, bottom + 0.03, wr * 0.9, wr * 0.9), shade(dark, 0.7)),  # far front wheel
        Part(ellipse(-wx + 0.08, bottom + 0.03, wr * 0.9, wr * 0.9), shade(dark, 0.7)),  # far rear wheel
        Part(rect(-L, bottom, L, top), body, textured=True),
        Part(poly((cab0 - 0.15, top), (cab0, roof), (cab1, roof), (cab1 + 0.2, top)), body),
        Part(poly((cab0 - 0.05, top + 0.03), (cab0 + 0.05, roof - 0.05), (cab1 - 0.03, roof - 0.05),
                  (cab1 + 0.1, top + 0.03)), glass),
        Part(ellipse(L - 0.06, (top + bottom) / 2 + 0.05, 0.06, 0.05, 16), hsv(0.15, 0.3, 1.0)),  # headlight
        Part(ellipse(-L + 0.05, (top + bottom) / 2 + 0.05, 0.05, 0.05, 16), hsv(0.0, 0.9, 0.85)),  # tail light
        Part(ellipse(wx, bottom, wr, wr), dark),  # near front wheel
        Part(ellipse(-wx, bottom, wr, wr), dark),  # near rear wheel
        Part(ellipse(wx, bottom, wr * 0.45, wr * 0.45, 16), accent),
        Part(ellipse(-wx, bottom, wr * 0.45, wr * 0.45, 16), accent),
    ]
    kps = {
        "near_front_wheel": (wx, bottom), "near_rear_wheel": (-wx, bottom),
        "far_front_wheel": (wx + 0.08, bottom + 0.03 + wr * 0.9), "far_rear_wheel": (-wx + 0.08, bottom + 0.03 + wr * 0.9),
        "headlight": (L - 0.06, (top + bottom) / 2 + 0.05), "tail_light": (-L + 0.05, (top + bottom) / 2 + 0.05),
        "roof_front": (cab1, roof), "roof_rear": (cab0, roof),
        "front_bumper": (L, bottom), "rear_bumper": (-L, bottom),
    }
    return Instance(parts, kps)


def fish(rng: np.random.Generator) -> Instance:
    body, accent, dark = _palette(rng)
    L, Hh = rng.uniform(0.55, 0.7), rng.uniform(0.22, 0.38)
    tail = rng.uniform(0.25, 0.4)
    fin = rng.uniform(0.15, 0.3)
    parts = [
        Part(poly((-L * 0.85, 0), (-L - tail, Hh * 0.9), (-L - tail * 0.75, 0), (-L - tail, -Hh * 0.9)), accent),
        Part(poly((-0.25, Hh * 0.8), (0.0, Hh + fin), (0.25, Hh * 0.75)), accent),  # dorsal fin
        Part(poly((0.0, -Hh * 0.8), (-0.12, -Hh - fin * 0.7), (0.15, -Hh * 0.85)), shade(accent, 0.7)),  # far fin
        Part(ellipse(0, 0, L, Hh), body, textured=True),
        Part(ellipse(L * 0.62, Hh * 0.25, Hh * 0.18, Hh * 0.18, 16), hsv(0, 0, 0.95)),
        Part(ellipse(L * 0.64, Hh * 0.25, Hh * 0.09, Hh * 0.09, 12), dark),
        Part(poly((L * 0.85, -Hh * 0.15), (L * 1.02, -Hh * 0.05), (L * 0.85, Hh * 0.02)), dark),  # mouth
        Part(poly((L * 0.25, -Hh * 0.2), (-0.05, -Hh * 0.55), (0.05, -Hh * 0.05)), shade(accent, 1.2)),  # near fin
    ]
    kps = {
        "mouth": (L * 1.02, -Hh * 0.05), "eye": (L * 0.64, Hh * 0.25), "dorsal_tip": (0.0, Hh + fin),
        "tail_top": (-L - tail, Hh * 0.9), "tail_bottom": (-L - tail, -Hh * 0.9),
        "tail_notch": (-L - tail * 0.75, 0.0), "near_fin_tip": (-0.05, -Hh * 0.55),
        "far_fin_tip": (-0.12, -Hh - fin * 0.7),
    }
    return Instance(parts, kps)


def robot(rng: np.random.Generator) -> Instance:
    """A frontal figure: its left arm appears on the viewer's right. Never mirrored."""
    body, accent, dark = _palette(rng)
    tw, th = rng.uniform(0.3, 0.42), rng.uniform(0.3, 0.42)  # torso half width / height
    hw = rng.uniform(0.18, 0.26)
    arm = rng.uniform(0.35, 0.55)
    leg = rng.uniform(0.3, 0.45)
    ty = rng.uniform(-0.05, 0.05)
    hy0 = ty + th + 0.04
    parts = [
        Part(rect(-tw - 0.12, ty + th - 0.1, -tw, ty + th - 0.1 - arm), shade(body, 0.8)),  # right arm (viewer left)
        Part(rect(tw, ty + th - 0.1, tw + 0.12, ty + th - 0.1 - arm), shade(body, 0.8)),  # left arm
        Part(rect(-tw * 0.8, ty - th, -tw * 0.25, ty - th - leg), dark),  # right leg
        Part(rect(tw * 0.25, ty - th, tw * 0.8, ty - th - leg), dark),  # left leg
        Part(rect(-tw, ty - th, tw, ty + th), body, textured=True),
        Part(rect(-tw * 0.4, ty - th * 0.3, tw * 0.4, ty + th * 0.4), accent),  # chest panel
        Part(ellipse(tw * 0.55, ty + th * 0.6, 0.05, 0.05, 12), hsv(0.0, 0.9, 0.9)),  # badge on the left chest
        Part(rect(-hw, hy0, hw, hy0 + 2 * hw * 0.8), shade(body, 1.15)),
        Part(rect(-0.015, hy0 + 1.6 * hw, 0.015, hy0 + 1.6 * hw + 0.15), dark),
        Part(ellipse(0, hy0 + 1.6 * hw + 0.17, 0.045, 0.045, 12), accent),
        Part(ellipse(-hw * 0.45, hy0 + hw * 0.95, hw * 0.2, hw * 0.2, 16), dark),
        Part(ellipse(hw * 0.45, hy0 + hw * 0.95, hw * 0.2, hw * 0.2, 16), dark),
    ]
    kps = {
        "antenna": (0, hy0 + 1.6 * hw + 0.17), "left_eye": (hw * 0.45, hy0 + hw * 0.95),
        "right_eye": (-hw * 0.45, hy0 + hw * 0.95), "left_hand": (tw + 0.06, ty + th - 0.1 - arm),
        "right_hand": (-tw - 0.06, ty + th - 0.1 - arm), "left_foot": (tw * 0.52, ty - th - leg),
        "right_foot": (-tw * 0.52, ty - th - leg), "left_shoulder": (tw, ty + th),
        "right_shoulder": (-tw, ty + th), "badge": (tw * 0.55, ty + th * 0.6),
    }
    return Instance(parts, kps, sided=False)


# Keypoint ids per category: the "near"/"far" canonical names become left/right by facing direction.
KEYPOINTS = {
    "bird": ["beak_tip", "eye", "crown", "tail_tip", "breast", "left_wing_tip", "right_wing_tip", "left_foot", "right_foot"],
    "car": ["left_front_wheel", "right_front_wheel", "left_rear_wheel", "right_rear_wheel", "headlight", "tail_light",
            "roof_front", "roof_rear", "front_bumper", "rear_bumper"],
    "fish": ["mouth", "eye", "dorsal_tip", "tail_top", "tail_bottom", "tail_notch", "left_fin_tip", "right_fin_tip"],
    "robot": ["antenna", "left_eye", "right_eye", "left_hand", "right_hand", "left_foot", "right_foot",
              "left_shoulder", "right_shoulder", "badge"],
}
BUILDERS = {"bird": bird, "car": car, "fish": fish, "robot": robot}


def semantic_name(canonical: str, facing_right: bool) -> str:
    """near/far → left/right: facing right (+x), the viewer sees the object's left side."""
    for side, (if_right, if_left) in (("near_", ("left_", "right_")), ("far_", ("right_", "left_"))):
        if canonical.startswith(side):
            rest = canonical[len(side):]
            if "wheel" in rest:  # cars: left_front_wheel
                pos, _, what = rest.partition("_")
                return f"{if_right if facing_right else if_left}{pos}_{what}"
            return f"{if_right if facing_right else if_left}{rest}"
    return canonical
