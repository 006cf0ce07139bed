"""The contracts between the core and plugins: Descriptor, Dataset, Pair, FeatureGrid, Preprocess.

This module imports no torch at import time so that listing plugins stays fast; torch is imported
where tensors are touched.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Sequence

import numpy as np

from .errors import DataError, DescriptorOutputError, MissingDataError, UsageError
from .options import Option, coerce_config, declare

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .requirements import Requirement


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureGrid:
    """Where the feature cells of an ``h × w`` map lie in the load-size image.

    Cell ``(i, j)`` describes the point ``x = offset_x + j * stride_x``, ``y = offset_y + i * stride_y``
    in pixel-index coordinates of the load-size image (pixel ``k`` covers ``[k - 0.5, k + 0.5]``).
    """

    stride_x: float
    stride_y: float
    offset_x: float
    offset_y: float

    @classmethod
    def spanning(cls, load_hw: tuple[int, int], feat_hw: tuple[int, int]) -> "FeatureGrid":
        """Cells tile the whole image (the default; bilinear ``align_corners=False`` semantics)."""
        (H, W), (h, w) = load_hw, feat_hw
        sx, sy = W / w, H / h
        return cls(sx, sy, sx / 2 - 0.5, sy / 2 - 0.5)

    @classmethod
    def patches(cls, stride: float, patch: float) -> "FeatureGrid":
        """Cell ``j`` is the centre of a ``patch``-pixel window starting at ``j * stride`` (ViTs, convs)."""
        centre = (patch - 1) / 2
        return cls(float(stride), float(stride), centre, centre)

    def is_spanning(self, load_hw: tuple[int, int], feat_hw: tuple[int, int]) -> bool:
        other = FeatureGrid.spanning(load_hw, feat_hw)
        return all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(astuple_grid(self), astuple_grid(other)))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def astuple_grid(g: FeatureGrid) -> tuple[float, float, float, float]:
    return (g.stride_x, g.stride_y, g.offset_x, g.offset_y)


RESIZE_POLICIES = ("square", "short_side", "long_side", "pad_square")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a descriptor input.

    ``resize``: ``square`` stretches to ``load_size × load_size`` (the DHF paper protocol; aspect is not
    kept); ``short_side`` scales the short side to ``load_size`` keeping aspect (dino-vit-features);
    ``long_side`` scales the long side to ``load_size`` keeping aspect; ``pad_square`` scales the long
    side to ``load_size`` keeping aspect and centres the image on a black ``load_size²`` canvas (sd-dino,
    GeoAware-SC, Probe3D). ``mean``/``std`` normalise the [0, 1] RGB input before ``extract`` when given.
    Keypoints map between frames through :meth:`content_box`; PCK is always scored in original pixels,
    so neither stretching nor padding changes a threshold (docs/protocol.md#threshold-frame).
    """

    load_size: int = 224
    resize: str = "square"
    resample: str = "bilinear"  # PIL filter: nearest, bilinear, bicubic, lanczos
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise UsageError(f"resize policy {self.resize!r} is not one of {', '.join(RESIZE_POLICIES)}")
        if int(self.load_size) < 1:
            raise UsageError(f"load_size must be a positive integer, got {self.load_size!r}")

    def load_hw(self, size_wh: tuple[int, int]) -> tuple[int, int]:
        """Load-frame (H, W) for an original image of size (W, H)."""
        W, H = size_wh
        S = int(self.load_size)
        if self.resize in ("square", "pad_square"):
            return S, S
        if self.resize == "short_side":
            # torchvision's Resize(int), which dino-vit-features uses, truncates the long side
            if W <= H:
                return max(1, int(S * H / W)), S
            return S, max(1, int(S * W / H))
        scale = S / max(W, H)
        return max(1, round(H * scale)), max(1, round(W * scale))

    def content_box(self, size_wh: tuple[int, int]) -> tuple[int, int, int, int]:
        """Where the resized image lies in the load frame: (left, top, width, height) in load pixels.

        The whole frame for every policy but ``pad_square``, whose image is centred with integer offsets.
        """
        H, W = self.load_hw(size_wh)
        if self.resize != "pad_square":
            return 0, 0, W, H
        w0, h0 = size_wh
        scale = int(self.load_size) / max(w0, h0)
        w, h = max(1, min(W, round(w0 * scale))), max(1, min(H, round(h0 * scale)))
        return (W - w) // 2, (H - h) // 2, w, h

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------------------------
class Descriptor:
    """A dense image descriptor.

    Subclasses set ``name`` and implement :meth:`extract`; everything else has a default. The runner
    calls :meth:`describe` (a template method): it runs :meth:`setup` once, normalises the batch,
    calls :meth:`extract` without autograd and validates what comes back.

    Config: ``default_config`` lists every key a user may override with ``--set <name>.<key>=value``,
    each value an :class:`~corrbench.options.Option` (type, doc, range or choices) or a plain default
    (typed by the default); the class then has ``options`` and a plain ``default_config`` of defaults;
    keys shared by a family of methods (``sd.model``) are declared in ``config_namespaces`` (namespace
    → keys). A method that downloads weights should accept ``weights=random`` for offline tests.
    Keys that change only how fast the same features come out (``sd.compile``) go in
    ``runtime_keys``: they are left out of the feature-cache key, so turning them on reuses the cache.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"  # bump when the output of the same config changes (cache key)
    default_config: ClassVar[dict[str, Any]] = {}
    #: key → Option, made from ``default_config`` when the class is defined
    options: ClassVar[dict[str, Option]] = {}
    #: True when the features depend on the image's category (a text prompt "a photo of a {category}"):
    #: ``extract`` then receives ``categories=[...]`` (one string or None per image), the category is part
    #: of the feature-cache key, and results.json marks the method as using class labels
    uses_category: ClassVar[bool] = False
    config_namespaces: ClassVar[dict[str, tuple[str, ...]]] = {}
    runtime_keys: ClassVar[tuple[str, ...]] = ()
    preprocess: ClassVar[Preprocess] = Preprocess()
    #: dtype in which features are cached and read back (float16 halves disk for big maps)
    cache_dtype: ClassVar[str] = "float32"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declare(cls)

    def __init__(self, config: dict[str, Any] | None = None, device: str = "cpu"):
        unknown = set(config or {}) - set(self.default_config)
        if unknown:
            raise UsageError(
                f"method {self.name!r} has no config key(s) {', '.join(sorted(unknown))}; "
                f"valid keys: {', '.join(sorted(self.default_config)) or '(none)'}"
            )
        self.config: dict[str, Any] = {**self.default_config, **coerce_config(self, config, self.name)}
        self.device = device
        self._ready = False
        #: changes a run's protocol makes to :meth:`preprocessing` (``resize``, ``load_size``); see
        #: :meth:`input_preprocessing`
        self.preprocess_changes: dict[str, Any] = {}

    # -- hooks for subclasses -------------------------------------------------------------
    def setup(self) -> None:
        """Load weights and build modules. Called once, before the first batch."""

    def extract(self, images: "torch.Tensor") -> "torch.Tensor":
        """Map a B×3×H×W float batch (in [0, 1], or normalised by ``mean``/``std``) to B×C×h×w.

        Contract: ``images`` is always a *contiguous* NCHW tensor (``images.is_contiguous()``), whatever
        the caller passed to :meth:`describe`. Some CPU kernels (torch's float32 GroupNorm, for one)
        lose most of their precision on channels-last inputs, so the core never hands one over; a
        method that wants channels-last for speed converts on purpose, where it is known to be safe.
        """
        raise NotImplementedError

    def feature_grid(self, load_hw: tuple[int, int], feat_hw: tuple[int, int]) -> FeatureGrid:
        """Where feature cells lie in the load image. Default: the cells tile the image."""
        return FeatureGrid.spanning(load_hw, feat_hw)

    def preprocessing(self) -> Preprocess:
        """The preprocessing for the current config (``load_size`` in the config overrides the class's)."""
        if "load_size" in self.config:
            return replace(self.preprocess, load_size=int(self.config["load_size"]))
        return self.preprocess

    def input_preprocessing(self) -> Preprocess:
        """What a run actually feeds the method: :meth:`preprocessing` with the protocol's changes applied.

        Not meant to be overridden: the runner, the cache key and results.json all read this one.
        """
        prep = self.preprocessing()
        return replace(prep, **self.preprocess_changes) if self.preprocess_changes else prep

    #: the registered readout that turns this method's maps into predictions unless ``--readout`` says
    #: otherwise (see corrbench.readouts); a property when it depends on the config
    default_readout: ClassVar[str] = "nn"

    def readout_features(self, fmap: "torch.Tensor") -> "torch.Tensor":
        """The map a readout compares, from a cached C×h×w map (default: the map itself).

        A method whose matching descriptor is a cheap function of a smaller cached map (DINO's
        log-binning) caches the small map and builds the descriptor here, at readout time.
        """
        return fmap

    #: True for a method with no learned or random weights at all (dense SIFT, raw colours): its
    #: features are fixed by its code and config alone, so :meth:`weights_identity` is ``"none"``.
    weight_free: ClassVar[bool] = False

    def weights_identity(self) -> str | None:
        """A string that changes whenever the weights change (a file hash, a hub revision...).

        The feature cache is keyed by it, so it must cover the weights actually used. The default
        digests the state dicts of :meth:`weight_modules` (after :meth:`setup`), so a re-seeded or
        retrained ad-hoc ``nn.Module`` never reuses old features; ``"none"`` for a ``weight_free``
        method; ``None`` when nothing is known, and the runner then recomputes instead of reusing.
        Methods that load a file or a hub snapshot override this with that file's or snapshot's identity.
        """
        if self.weight_free:
            return "none"
        self.ensure_ready()
        modules = self.weight_modules()
        if not modules:
            return None
        from .hashing import state_dict_digest

        return "state-dict:" + state_dict_digest(modules)

    def weight_modules(self) -> "dict[str, torch.nn.Module]":
        """The modules whose parameters and buffers determine the features (default: every
        ``torch.nn.Module`` attribute of the descriptor, found after :meth:`setup`)."""
        import torch

        return {k: v for k, v in sorted(vars(self).items()) if isinstance(v, torch.nn.Module)}

    @classmethod
    def tiny_config(cls, workdir: Path) -> "dict[str, Any] | None":
        """Overrides that make this method tiny and weightless (random weights, small inputs), for tests.

        Like timm's weightless conformance tests: the conformance suite and the CI lane run every
        method that returns a dict here. ``workdir`` is a folder the method may build tiny models in
        (reuse what is already there). ``None`` (the default): the method offers no tiny configuration.
        """
        return None

    def run_info(self) -> dict[str, Any]:
        """Extra facts recorded in results.json (e.g. the checkpoint's stored config)."""
        return {}

    #: rough seconds of work, for ``corrbench reproduce``'s time estimate: ``{"image": (gpu, cpu)}`` per image
    #: extracted and ``{"pair": (gpu, cpu)}`` per pair read out; a missing entry uses the core's generic figures
    cost_estimate: ClassVar[dict[str, tuple[float, float]]] = {}

    def requirements(self) -> "list[Requirement]":
        """The weights this configuration needs, looked up without downloading or loading anything.

        ``corrbench reproduce`` lists them in its plan and stops before any work while one is missing
        (see :mod:`corrbench.requirements` and docs/plugins.md). Default: nothing to check (``[]``).
        """
        return []

    def shared_pass(self) -> "SharedPass | None":
        """The expensive computation this method shares with others, or None (the default).

        Methods of one run whose shared passes compare equal (and whose preprocessing is the same)
        are extracted together: the runner calls ``shared_pass().run(descriptors, images)`` once per
        batch instead of each method's :meth:`extract` (every SD-based row of the DHF table shares
        one DDIM inversion). Each output must equal what the method's own :meth:`extract` returns.
        """
        return None

    def extract_raw(self, images: "torch.Tensor") -> "torch.Tensor":
        """Raw intermediate features for ``corrbench extract --raw`` (methods that have such a notion).

        Called through :meth:`describe_raw`, with the same contiguous NCHW contract as :meth:`extract`.
        """
        from .errors import UsageError as _UsageError

        raise _UsageError(f"method {self.name!r} has no raw feature export (--raw)")

    # -- template method --------------------------------------------------------------------
    def ensure_ready(self) -> None:
        """Run :meth:`setup` once."""
        if not self._ready:
            self.setup()
            self._ready = True

    def describe(self, images: "torch.Tensor", categories: "Sequence[str | None] | None" = None) -> "torch.Tensor":
        """:meth:`extract` under the input contract, output checked; ``categories`` reach it only when
        the method :attr:`uses_category`."""
        import torch

        images = self._prepare(images)
        with torch.inference_mode():
            if self.uses_category:
                cats = list(categories) if categories is not None else [None] * images.shape[0]
                out = self.extract(images, categories=cats)
            else:
                out = self.extract(images)
        self._validate(out, images.shape[0])
        return out

    def describe_raw(self, images: "torch.Tensor") -> "torch.Tensor":
        """:meth:`extract_raw` on a batch that is normalised and contiguous, as :meth:`describe` hands it."""
        import torch

        images = self._prepare(images)
        with torch.inference_mode():
            return self.extract_raw(images)

    def _prepare(self, images: "torch.Tensor") -> "torch.Tensor":
        """Check the batch, set up once, normalise, and make it contiguous NCHW (the extract contract)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise DescriptorOutputError(f"{self.name}: input must be B×3×H×W, got {tuple(images.shape)}")
        self.ensure_ready()
        return self._normalise(images).contiguous()

    def _normalise(self, images: "torch.Tensor") -> "torch.Tensor":
        import torch

        prep = self.input_preprocessing()
        if prep.mean is None:
            return images
        mean = torch.tensor(prep.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(prep.std or (1.0, 1.0, 1.0), dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def _validate(self, out: Any, batch: int) -> None:
        import torch

        if not isinstance(out, torch.Tensor):
            raise DescriptorOutputError(f"{self.name}.extract returned {type(out).__name__}, not a tensor")
        if out.ndim != 4 or out.shape[0] != batch:
            raise DescriptorOutputError(
                f"{self.name}.extract must return B×C×h×w with B={batch}, got shape {tuple(out.shape)}"
            )
        if not out.is_floating_point():
            raise DescriptorOutputError(f"{self.name}.extract returned dtype {out.dtype}; expected floating point")
        if min(out.shape[1:]) < 1:
            raise DescriptorOutputError(f"{self.name}.extract returned an empty map {tuple(out.shape)}")
        if not torch.isfinite(out).all():
            raise DescriptorOutputError(f"{self.name}.extract returned NaN or infinite values")


class SharedPass:
    """One computation several descriptors draw their features from (see :meth:`Descriptor.shared_pass`).

    Subclasses are hashable values (frozen dataclasses): two methods share a pass when their passes
    compare equal, so the value must hold everything the computation depends on.
    """

    def run(self, descriptors: "list[Descriptor]", images: "torch.Tensor") -> "list[torch.Tensor]":
        """The outputs of ``descriptors`` (ready, same order) for a normalised batch, from one computation."""
        raise NotImplementedError


def describe_together(descriptors: "list[Descriptor]", images: "torch.Tensor") -> "list[torch.Tensor]":
    """:meth:`Descriptor.describe` for descriptors of one shared pass: one computation, each output checked."""
    import torch

    if not descriptors:
        return []
    shared = descriptors[0].shared_pass()
    if shared is None or any(d.shared_pass() != shared for d in descriptors[1:]):
        raise UsageError(f"methods {[d.name for d in descriptors]} do not share one pass")
    if images.ndim != 4 or images.shape[1] != 3:
        raise DescriptorOutputError(f"{descriptors[0].name}: input must be B×3×H×W, got {tuple(images.shape)}")
    for d in descriptors:
        d.ensure_ready()
    images = descriptors[0]._normalise(images).contiguous()
    with torch.inference_mode():
        outs = shared.run(list(descriptors), images)
    if len(outs) != len(descriptors):
        raise DescriptorOutputError(f"shared pass {shared!r} returned {len(outs)} outputs for {len(descriptors)} methods")
    for d, out in zip(descriptors, outs):
        d._validate(out, images.shape[0])
    return list(outs)


class PairConditionedDescriptor(Descriptor):
    """A method whose keypoint transfer depends on the pair (DHPF's gates, Hough matching...).

    Per-image maps from :meth:`extract` are still computed once per image and cached; its default
    readout, ``pair-conditioned``, then calls :meth:`transfer` for each pair.
    """

    default_readout: ClassVar[str] = "pair-conditioned"

    def transfer(self, source_map: "torch.Tensor", target_map: "torch.Tensor",
                 source_grid: FeatureGrid, target_grid: FeatureGrid,
                 source_load_hw: tuple[int, int], target_load_hw: tuple[int, int],
                 source_points: "torch.Tensor") -> "torch.Tensor":
        """Predict target points (N×2, x then y, target load frame) for source points (N×2, source load frame).

        ``source_map``/``target_map`` are the C×h×w maps :meth:`extract` produced for each image.
        """
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
Box = tuple[float, float, float, float]


@dataclass
class Pair:
    """One source/target image pair with row-aligned keypoints.

    Points are N×2 arrays of (x, y) in original-image pixels; boxes are (left, top, right, bottom) in
    original pixels. ``source_size``/``target_size`` are (W, H) when the annotation states them (the
    runner checks them against the decoded image). ``metadata`` holds scalar facts such as SPair
    difficulty flags, which the PCK engine can break results down by, and ``keypoint_ids``.
    """

    id: str
    source: Path
    target: Path
    source_points: np.ndarray
    target_points: np.ndarray
    source_box: Box | None = None
    target_box: Box | None = None
    category: str = ""
    source_size: tuple[int, int] | None = None
    target_size: tuple[int, int] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.source = Path(self.source)
        self.target = Path(self.target)
        self.source_points = np.asarray(self.source_points, dtype=np.float64).reshape(-1, 2)
        self.target_points = np.asarray(self.target_points, dtype=np.float64).reshape(-1, 2)

    def problems(self) -> list[str]:
        """What is wrong with this pair's annotation (empty when it is usable)."""
        out = []
        n_s, n_t = len(self.source_points), len(self.target_points)
        if n_s != n_t:
            out.append(f"{n_s} source keypoints but {n_t} target keypoints")
        if n_s == 0 or n_t == 0:
            out.append("no keypoints")
        for side, pts in (("source", self.source_points), ("target", self.target_points)):
            if pts.size and not np.isfinite(pts).all():
                out.append(f"non-finite {side} keypoint coordinates")
        for side, box in (("source", self.source_box), ("target", self.target_box)):
            if box is not None:
                l, t, r, b = box
                if not all(math.isfinite(v) for v in box) or r <= l or b <= t:
                    out.append(f"{side} box {list(box)} is not (left, top, right, bottom) with right > left, bottom > top")
        for side, pts, size in (("source", self.source_points, self.source_size),
                                ("target", self.target_points, self.target_size)):
            if size is not None and pts.size and np.isfinite(pts).all():
                W, H = size
                # SPair allows points on the far edge (VOC 1-based boxes); more than 1 px outside is an error
                bad = (pts[:, 0] < -1) | (pts[:, 1] < -1) | (pts[:, 0] > W) | (pts[:, 1] > H)
                if bad.any():
                    out.append(f"{int(bad.sum())} {side} keypoint(s) outside the {W}×{H} image")
        return out


class Dataset:
    """A source of keypoint-annotated image pairs.

    Subclasses set ``name``, ``splits`` and implement :meth:`iter_pairs`. The root is resolved from the
    ``root`` argument (``--data-root``), then ``$CORRBENCH_DATA/<root_dirname>``, then the user cache
    dir. With ``skip_invalid`` a malformed pair is a warning and is counted in ``self.skipped``;
    otherwise it raises :class:`DataError` naming the file.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"

    splits: ClassVar[tuple[str, ...]] = ("test",)
    default_split: ClassVar[str] = "test"
    default_config: ClassVar[dict[str, Any]] = {}
    #: key → Option, made from ``default_config`` when the class is defined (see :class:`Descriptor`)
    options: ClassVar[dict[str, Option]] = {}
    root_dirname: ClassVar[str] = ""
    difficulty_flags: ClassVar[tuple[str, ...]] = ()
    how_to_get: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declare(cls)

    def __init__(self, root: str | os.PathLike | None = None, split: str | None = None,
                 config: dict[str, Any] | None = None, skip_invalid: bool = False):
        unknown = set(config or {}) - set(self.default_config)
        if unknown:
            raise UsageError(
                f"dataset {self.name!r} has no config key(s) {', '.join(sorted(unknown))}; "
                f"valid keys: {', '.join(sorted(self.default_config)) or '(none)'}"
            )
        self.config: dict[str, Any] = {**self.default_config, **coerce_config(self, config, self.name)}
        self.split = split or self.default_split
        if self.split not in self.available_splits():
            raise UsageError(f"dataset {self.name!r} has no split {self.split!r}; "
                             f"splits: {', '.join(self.available_splits())}")
        self.root = self.resolve_root(root)
        self.skip_invalid = skip_invalid
        self.skipped: list[str] = []

    # -- root ------------------------------------------------------------------------------
    @classmethod
    def default_root(cls) -> Path:
        dirname = cls.root_dirname or cls.name
        env = os.environ.get("CORRBENCH_DATA")
        if env:
            return Path(env).expanduser() / dirname
        from .paths import user_cache_root

        return user_cache_root() / "datasets" / dirname

    @classmethod
    def resolve_root(cls, root: str | os.PathLike | None) -> Path:
        return Path(root).expanduser() if root else cls.default_root()

    def available_splits(self) -> tuple[str, ...]:
        return self.splits

    # -- pairs -----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Make sure the data is present (download or generate); raise MissingDataError otherwise."""
        if not self.root.exists():
            raise MissingDataError(
                f"dataset {self.name!r}: root {self.root} does not exist. {self.how_to_get}".strip()
            )

    def iter_pairs(self) -> Iterator[Pair]:
        raise NotImplementedError

    def download(self) -> None:
        """Fetch the dataset into ``self.root`` (``corrbench data download``)."""
        raise MissingDataError(f"dataset {self.name!r} cannot be downloaded by corrbench. {self.how_to_get}".strip())

    def info(self) -> dict[str, Any]:
        """What ``corrbench data info`` shows: root, splits, counts when cheap, licence and source."""
        return {"name": self.name, "root": str(self.root), "exists": self.root.exists(),
                "splits": list(self.available_splits()), "split": self.split, "how_to_get": self.how_to_get}

    def pairs(self) -> Iterator[Pair]:
        """The split's pairs, annotation problems handled by the skip policy."""
        self.prepare()
        for pair in self.iter_pairs():
            problems = pair.problems()
            if problems:
                self.invalid(f"pair {pair.id}: {'; '.join(problems)}")
                continue
            yield pair

    def invalid(self, message: str, cause: BaseException | None = None) -> None:
        """Report a malformed item: an error, or with ``skip_invalid`` a counted warning."""
        if not self.skip_invalid:
            raise DataError(message) from cause
        self.skipped.append(message)
        warnings.warn(f"skipping: {message}", stacklevel=2)

    def validate(self) -> list[str]:
        """Every problem found by reading all pairs and checking their images exist."""
        found: list[str] = []
        skip, self.skip_invalid = self.skip_invalid, True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for pair in self.pairs():
                    for path in (pair.source, pair.target):
                        if not path.is_file():
                            found.append(f"pair {pair.id}: image {path} is missing")
        except DataError as exc:
            found.append(str(exc))
        finally:
            self.skip_invalid = skip
        return self.skipped + found

    def requirements(self) -> "list[Requirement]":
        """What this dataset needs on disk, checked without downloading or generating anything.

        Default: the root folder must exist (with ``how_to_get`` as the fix). See :mod:`corrbench.requirements`.
        """
        from .requirements import root_requirement

        return [root_requirement(self.name, self.root, self.how_to_get)]

    def pair_counts(self) -> tuple[int, int] | None:
        """(pairs, distinct images) of the split when cheap to know (a pair list on disk), else None.

        Called after :meth:`prepare` by ``corrbench reproduce`` for its time estimate; never reads images.
        """
        return None

    def protocol(self) -> dict[str, Any]:
        """Facts about the evaluation protocol recorded in results.json (pair list file, sha256...)."""
        return {}

    def mirror_partners(self, category: str) -> dict[str, str]:
        """Left/right partner of each keypoint id of ``category`` (``{"3": "4", "4": "3", ...}``).

        Keypoint ids are the strings in ``Pair.metadata["keypoint_ids"]``. The runner uses the map for the
        left/right swap rate (a prediction that lands on the mirror partner of its keypoint). Symmetric;
        ids without a partner (a nose, a tail) are left out. Default: nothing known, no swap rate.
        """
        return {}
