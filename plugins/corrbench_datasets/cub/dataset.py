"""The ``cub`` dataset: CUB-200-2011 in its native layout under corrbench's pair protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from corrbench.api import Dataset, Pair
from corrbench.errors import DataError, UsageError
from corrbench.options import Option
from corrbench.requirements import Requirement

from .annotations import CUB_URL, EXPECTED, PROTOCOL_RULE, PROTOCOL_VERSION, REQUIRED_FILES, read_cub
from .crops import CROP_MODES, CROP_RULE, CROP_SIZE, CROP_VERSION, CropResult, crop_folder_name, ensure_cropped
from .pairs import ensure_pair_list

# the 15 part names of parts/parts.txt, by 1-based part id (used when the file is not there)
CUB_PART_NAMES = ("back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing",
                  "nape", "right eye", "right leg", "right wing", "tail", "throat")


class CUBDataset(Dataset):
    """CUB-200-2011 bird parts: a frozen, seeded list of same-class pairs (default 360 test pairs)."""

    name = "cub"
    description = ("CUB-200-2011: seeded list of same-class test pairs, 15 bird parts, uncropped images "
                   "(cub.crop=bbox: ACSM-style 256 x 256 crops)")
    version = "1"
    splits = ("test", "train")
    default_split = "test"
    default_config = {
        "pairs": Option(None, "path", "your own pair list (DHF JSON schema) instead of the generated one"),
        "num_pairs": Option(360, int, "pairs in the generated list", min=1),
        "seed": Option(0, int, "seed of the generated list", min=0),
        "crop": Option("none", str, "none = uncropped images, the protocol default; bbox = the box padded 5 %, "
                       "squared, edge-padded and resized to 256", choices=CROP_MODES),
    }
    root_dirname = "CUB_200_2011"
    difficulty_flags = ()
    url = CUB_URL
    sha256: str | None = None  # not published; the download manifest records the one computed
    verify_splits = ("test",)
    licence = ("No licence stated; the bundled README asks for a citation. Images are Flickr photos (and overlap "
               "ImageNet): research use only, do not redistribute.")
    how_to_get = ("Run `corrbench data download cub` (from data.caltech.edu), or fetch "
                  f"{CUB_URL}, unpack it and pass --data-root .../CUB_200_2011 (or set $CORRBENCH_DATA to its "
                  "parent folder).")

    def __init__(self, root=None, split=None, config=None, skip_invalid: bool = False):
        super().__init__(root, split, config, skip_invalid)
        crop = self.config.get("crop")
        crop = "none" if crop is None else crop
        if crop not in CROP_MODES:
            raise UsageError(f"cub.crop={crop!r} is not a crop mode; valid: 'none' (uncropped images, the protocol "
                             "default) or 'bbox' (box padded 5 %, squared, edge-padded, resized to 256)")
        self.crop: str = crop
        self.num_pairs = self._positive_int("num_pairs")
        seed = self.config.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UsageError(f"cub.seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        pairs = self.config.get("pairs")
        self.pairs_file: Path | None = Path(pairs).expanduser() if pairs else None
        self._list: Path | None = None
        self._crop: CropResult | None = None

    def _positive_int(self, key: str) -> int:
        v = self.config.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"cub.{key} must be a positive integer, got {v!r}")
        return v

    def prepare(self) -> None:
        super().prepare()
        if self.pairs_file is not None:
            if not self.pairs_file.is_file():
                raise DataError(f"{self.pairs_file}: pair list does not exist (given by cub.pairs)")
            self._list = self.pairs_file
        else:
            self._list = ensure_pair_list(self.root, self.split, num_pairs=self.num_pairs, seed=self.seed)
        if self.crop == "bbox" and self._crop is None:  # once per dataset object (the runner prepares twice)
            self._crop = self._ensure_cropped()

    def _ensure_cropped(self) -> CropResult:
        """The cropped images and list, beside the generated list (a user's list: under the dataset folder)."""
        from corrbench.download import sha256_file

        from .._archive import user_cache

        assert self._list is not None
        cache = user_cache() / "annotations" / "cub"
        if self.pairs_file is None:
            return ensure_cropped(self._list, self.root / "images", [self._list.parent, cache])
        # a user's list may sit anywhere (read-only, or another list with the same name): key it by content
        name = crop_folder_name(self._list, sha256_file(self._list))
        return ensure_cropped(self._list, self.root / "images", [self.root / ".corrbench" / "cub", cache],
                              folder_name=name)

    def iter_pairs(self) -> Iterator[Pair]:
        from ..dhf_json import iter_dhf_pairs

        if self._list is None or (self.crop == "bbox" and self._crop is None):
            self.prepare()
        if self.crop == "bbox":
            assert self._crop is not None
            for message in self._crop.problems:  # entries of the source list that could not be cropped
                self.invalid(message)
            for pair in iter_dhf_pairs(self._crop.pairs, self._crop.images, invalid=self.invalid):
                # stated, so the runner checks the decoded crops; PCK@img then uses 256, the crop's side
                pair.source_size = pair.target_size = (CROP_SIZE, CROP_SIZE)
                yield pair
            return
        for pair in iter_dhf_pairs(self._list, self.root / "images", invalid=self.invalid):
            yield pair

    def requirements(self) -> list[Requirement]:
        """The CUB folder (with images.txt) and, when given, the ``cub.pairs`` file; the default list is generated."""
        from corrbench.requirements import MISSING, root_requirement

        found = root_requirement(self.name, self.root, self.how_to_get, marker="images.txt")
        if found.blocking:
            return [found]
        out = [found]
        if self.pairs_file is not None and not self.pairs_file.is_file():
            out.append(Requirement("data", "CUB pair list (cub.pairs)", str(self.pairs_file), MISSING, "file missing"))
        return out

    def protocol(self) -> dict[str, Any]:
        from corrbench.download import sha256_file

        out: dict[str, Any] = {"threshold": "target bounding box (bounding_boxes.txt, x y w h → l t r b)",
                               "crop": self.crop}
        if self.crop == "bbox":
            out.update(threshold=("target bounding box after the crop (bounding_boxes.txt box shifted by the crop "
                                  "origin and scaled by 256 / side); img: 256, the cropped image's side"),
                       crop_rule=CROP_RULE, crop_size=CROP_SIZE, crop_version=CROP_VERSION)
            if self._crop is not None:
                out.update(cropped_pair_list=str(self._crop.pairs), cropped_images=str(self._crop.images),
                           crop_dropped_pairs=self._crop.dropped_pairs,
                           crop_dropped_keypoints=self._crop.dropped_keypoints)
                if self._crop.pairs.is_file():
                    out["cropped_pair_list_sha256"] = sha256_file(self._crop.pairs)
        if self.pairs_file is not None:
            out["pair_list"] = str(self.pairs_file)
        else:
            out.update(rule=PROTOCOL_RULE, seed=self.seed, num_pairs=self.num_pairs, split=self.split,
                       protocol_version=PROTOCOL_VERSION)
            if self._list is not None:
                out["pair_list"] = str(self._list)
        if self._list is not None and self._list.is_file():
            out["pair_list_sha256"] = sha256_file(self._list)
        return out

    def mirror_partners(self, category: str) -> dict[str, str]:
        """left/right eye, leg and wing (1-based part ids, the same for every class), from parts/parts.txt."""
        from .._mirror import partners_from_names
        from .annotations import read_id_text

        names = {str(k): v for k, v in enumerate(CUB_PART_NAMES, start=1)}
        path = self.root / "parts" / "parts.txt"
        if path.is_file():
            try:
                names = {str(k): v for k, v in read_id_text(path).items()}
            except DataError:
                pass  # the standard names; a broken parts.txt is reported where the parts are read
        return partners_from_names(names)

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update(source=self.url, licence=self.licence, protocol=PROTOCOL_RULE,
                   num_pairs=self.num_pairs, seed=self.seed, crop=self.crop)
        try:
            ann = read_cub(self.root)
            out["images"] = len(ann.images)
            out["classes"] = len(set(ann.labels.values()))
            out["train"] = len(ann.split_ids("train"))
            out["test"] = len(ann.split_ids("test"))
        except DataError as exc:
            out["error"] = str(exc)
        return out

    def verify_layout(self) -> dict[str, Any]:
        root = self.root
        if not root.is_dir():
            return {"problems": [f"{root}: dataset root does not exist. {self.how_to_get}"], "counts": {},
                    "notes": []}
        problems = [f"{root / f}: file is missing" for f in REQUIRED_FILES if not (root / f).is_file()]
        if not (root / "images").is_dir():
            problems.append(f"{root / 'images'}: folder is missing")
        counts: dict[str, Any] = {}
        notes: list[str] = []
        if problems:
            return {"problems": problems, "counts": counts, "notes": notes}
        try:
            ann = read_cub(root)
        except DataError as exc:
            return {"problems": [str(exc)], "counts": counts, "notes": notes}
        counts = {"images": len(ann.images), "classes": len(set(ann.labels.values())),
                  "train": len(ann.split_ids("train")), "test": len(ann.split_ids("test"))}
        missing = [rel for rel in ann.images.values() if not (root / "images" / rel).is_file()]
        if missing:
            problems.append(f"{root / 'images'}: {len(missing)} image(s) of images.txt are missing: "
                            + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        for key, value in counts.items():
            if value != EXPECTED[key]:
                notes.append(f"{value} {key} (the full dataset has {EXPECTED[key]})")
        return {"problems": problems, "counts": counts, "notes": notes}

    def download(self, url: str | None = None, sha256: str | None = None, keep_archive: bool = False,
                 progress: bool = True) -> dict[str, Any]:
        """Download and install CUB-200-2011 into ``self.root``."""
        import os

        from .._archive import download_archive_dataset

        return download_archive_dataset(
            url=url or os.environ.get("CORRBENCH_CUB_URL") or self.url, sha256=sha256 or self.sha256,
            target=self.root, inner="CUB_200_2011", keep_archive=keep_archive, progress=progress)
