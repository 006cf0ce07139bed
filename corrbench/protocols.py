"""Protocol presets: every knob of a published evaluation, set at once by ``--protocol NAME``.

Published numbers disagree mostly because of settings that hide in each paper's code: per-image
versus per-keypoint averaging, ``<`` versus ``≤``, the input resolution and padding, the readout,
flip augmentation and pair subsampling. A :class:`Protocol` names all of them; a run records the
whole preset in ``results.json`` (``protocol.name`` and ``protocol.preset``), and ``compare`` and the
leaderboard refuse to rank runs of different protocols. Presets are registered through the
``register_protocols`` hook, so a plugin can add the protocol of a new paper; the core's own are
below and documented in docs/protocol.md#protocol-presets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .hookspecs import hookimpl

AVERAGES = ("point", "image", "category")


@dataclass(frozen=True)
class Protocol:
    """One published evaluation protocol.

    ``alphas``/``compare`` go to the PCK engine; ``headline_norm``/``headline_average`` choose the
    number a table shows first (``category``: the mean over categories of pooled per-category PCK);
    ``readout`` (+ ``readout_config``) replaces each method's default readout; ``resize`` and
    ``load_size`` change every method's input preprocessing (None: the method's own); ``flip``
    averages each method's features with those of the mirrored image; ``pairs_per_category`` keeps a
    seeded subsample of that many pairs per category (without replacement).
    """

    name: str
    description: str
    source: str
    alphas: tuple[float, ...] = (0.01, 0.05, 0.10, 0.15)
    compare: str = "le"
    headline_norm: str = "bbox"
    headline_average: str = "point"
    readout: str | None = None
    readout_config: dict[str, Any] = field(default_factory=dict)
    resize: str | None = None
    load_size: int | None = None
    flip: bool = False
    pairs_per_category: int | None = None
    sample_seed: int = 0
    notes: str = ""

    def __post_init__(self) -> None:
        if self.compare not in ("le", "lt"):
            raise ValueError(f"protocol {self.name}: compare must be 'le' or 'lt'")
        if self.headline_average not in AVERAGES:
            raise ValueError(f"protocol {self.name}: headline_average must be one of {AVERAGES}")
        if self.headline_norm not in ("bbox", "img"):
            raise ValueError(f"protocol {self.name}: headline_norm must be 'bbox' or 'img'")

    @property
    def preprocess_changes(self) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        if self.resize is not None:
            changes["resize"] = self.resize
        if self.load_size is not None:
            changes["load_size"] = int(self.load_size)
        return changes

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["alphas"] = list(self.alphas)
        return out


DHF = Protocol(
    name="dhf",
    description="Diffusion Hyperfeatures: each method's own input size, nn readout, ≤, pooled per keypoint",
    source="Luo et al., NeurIPS 2023, and its evaluation notebooks",
    headline_norm="bbox", headline_average="point",
    notes="corrbench's default. The paper's table shows PCK@0.1 img and bbox pooled over keypoints.")

DIFT = Protocol(
    name="dift",
    description="DIFT: 768² stretched input, nn readout on maps upsampled to the image, ≤, per keypoint",
    source="Tang et al., NeurIPS 2023 (Emergent Correspondence from Image Diffusion), SPair evaluation script",
    alphas=(0.05, 0.10, 0.15), resize="square", load_size=768,
    notes="The script prints per-image and per-keypoint PCK; the paper's SPair number is the per-keypoint one.")

SD_DINO = Protocol(
    name="sd-dino",
    description="SD+DINO: padded to an 840² square, nn readout, <, per image, 20 pairs per category",
    source="Zhang et al., NeurIPS 2023 (A Tale of Two Features), evaluation defaults",
    alphas=(0.01, 0.05, 0.10), compare="lt", headline_average="image", resize="pad_square", load_size=840,
    pairs_per_category=20,
    notes="The original draws its 20 pairs per category with replacement; corrbench draws without "
          "replacement (seeded), so no pair counts twice. SD ran at 960 px there; here one size serves every method.")

GEOAWARE = Protocol(
    name="geoaware",
    description="GeoAware-SC zero-shot: 840² padded square, window soft-argmax, <, per image, 20 pairs per category",
    source="Zhang et al., CVPR 2024 (Telling Left from Right), evaluation defaults (TEST_SAMPLE=20)",
    alphas=(0.01, 0.05, 0.10), compare="lt", headline_average="image", readout="window-soft-argmax",
    resize="pad_square", load_size=840, pairs_per_category=20,
    notes="ADAPT_FLIP (choose the original or the mirrored source per pair with instance masks or a mutual-NN "
          "score) is not reproduced; the geoaware-flip preset averages flipped features instead.")

GEOAWARE_FULL = Protocol(
    name="geoaware-full",
    description="geoaware on every test pair (no 20-per-category subsample)",
    source="as geoaware; the full-set variant later papers report",
    alphas=GEOAWARE.alphas, compare="lt", headline_average="image", readout="window-soft-argmax",
    resize="pad_square", load_size=840)

GEOAWARE_FLIP = Protocol(
    name="geoaware-flip",
    description="geoaware-full with flip test-time augmentation (features of image and mirror averaged)",
    source="as geoaware; flip averaging stands in for ADAPT_FLIP, which needs an extra model",
    alphas=GEOAWARE.alphas, compare="lt", headline_average="image", readout="window-soft-argmax",
    resize="pad_square", load_size=840, flip=True)

PROBE3D = Protocol(
    name="probe3d",
    description="Probe3D: 800² padded square, nn readout, <, α=0.1, mean over categories, 200 pairs per category",
    source="El Banani et al., CVPR 2024 (Probing the 3D Awareness of Visual Foundation Models), SPair evaluation",
    alphas=(0.10,), compare="lt", headline_average="category", resize="pad_square", load_size=800,
    pairs_per_category=200,
    notes="Probe3D pads with white and samples the source by bilinear interpolation; corrbench pads black and "
          "samples the source bilinearly as its nn readout always does.")

VISUAL_AI = Protocol(
    name="visual-ai",
    description="Visual-AI unified evaluator: kernel soft-argmax (σ=7, τ=0.04), ≤, per image, α 0.01–0.15",
    source="Visual-AI/Semantic-Correspondence (Unified Benchmarking, TPAMI 2025), evaluator defaults",
    alphas=(0.01, 0.05, 0.10, 0.15), headline_average="image", readout="kernel-soft-argmax",
    readout_config={"sigma": 7.0, "temperature": 0.04}, load_size=840,
    notes="The evaluator scores four readouts in one pass; this preset picks its kernel soft-argmax with the "
          "evaluator's σ and τ, applied in corrbench's units (σ in target load pixels).")

BUILTIN = (DHF, DIFT, SD_DINO, GEOAWARE, GEOAWARE_FULL, GEOAWARE_FLIP, PROBE3D, VISUAL_AI)
DEFAULT = "dhf"


@hookimpl
def register_protocols(register):
    for preset in BUILTIN:
        register(preset)


def get_protocol(name: str) -> Protocol:
    """A registered preset by name (one-line error listing the known ones)."""
    from .plugins import get_host

    return get_host().protocols.get(name)
