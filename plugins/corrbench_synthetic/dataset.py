"""The ``synthetic`` dataset: generated on first use, then read back through the SPair-71k reader."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from filelock import FileLock

from corrbench.api import Dataset, Pair
from corrbench.errors import DataError, UsageError
from corrbench.options import Option
from corrbench.requirements import PRESENT, Requirement
from corrbench.fsmode import apply_umask
from corrbench_datasets.spair import iter_spair_pairs

from .generate import CATEGORIES, GENERATOR_VERSION, write_dataset


class SyntheticDataset(Dataset):
    """Generated creatures (bird, car, fish, robot) in SPair-71k layout; offline, deterministic."""

    name = "synthetic"
    version = str(GENERATOR_VERSION)
    splits = ("trn", "val", "test")
    default_split = "test"
    default_config = {
        "seed": Option(0, int, "generator seed (each seed is its own dataset)", min=0),
        "categories": Option(None, list, "only these categories (bird, car, fish, robot); null = all", item=str),
    }
    root_dirname = "synthetic"
    difficulty_flags = ("viewpoint_variation", "scale_variation")
    how_to_get = "It is generated automatically on first use; no download needed."

    @property
    def layout_root(self) -> Path:
        """The generated SPair-layout folder for this generator version and seed."""
        return self.root / f"v{GENERATOR_VERSION}-seed{int(self.config['seed'])}"

    def prepare(self) -> None:
        target = self.layout_root
        if (target / ".complete").exists():
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, a read-only or missing mount
            raise DataError(f"cannot create the synthetic dataset folder {self.root}: {exc.strerror or exc}") from exc
        with FileLock(str(self.root / f".{target.name}.lock")):
            if (target / ".complete").exists():  # another process generated it while we waited
                return
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=self.root))
            try:
                write_dataset(tmp, seed=int(self.config["seed"]))
                (tmp / ".complete").write_text(f"corrbench synthetic v{GENERATOR_VERSION}\n")
                if target.exists():  # an interrupted earlier attempt without its marker
                    shutil.rmtree(target)
                apply_umask(tmp, directory=True)  # not mkdtemp's 0700: a shared data folder must stay readable
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def requirements(self) -> list[Requirement]:
        """Nothing to fetch: the data is generated on first use."""
        return [Requirement("data", "synthetic dataset", str(self.root), PRESENT, "generated on first use")]

    def _categories(self):
        value = self.config.get("categories")
        if not value:
            return None
        cats = [c.strip() for c in value.split(",")] if isinstance(value, str) else list(value)
        unknown = sorted(set(cats) - set(CATEGORIES))
        if unknown:
            raise UsageError(f"synthetic.categories: unknown {', '.join(unknown)}; known: {', '.join(CATEGORIES)}")
        return cats

    def iter_pairs(self) -> Iterator[Pair]:
        yield from iter_spair_pairs(self.layout_root, self.split, categories=self._categories(), invalid=self.invalid)

    def mirror_partners(self, category: str) -> dict[str, str]:
        """Ids whose names differ only by left_/right_ (shapes.KEYPOINTS; ids are positions in that list)."""
        from .shapes import KEYPOINTS

        names = KEYPOINTS.get(category, [])
        by_name = {n: i for i, n in enumerate(names)}
        out = {}
        for i, n in enumerate(names):
            for side, other in (("left_", "right_"), ("right_", "left_")):
                if n.startswith(side) and other + n[len(side):] in by_name:
                    out[str(i)] = str(by_name[other + n[len(side):]])
        return out

    def protocol(self) -> dict:
        return {"generator_version": GENERATOR_VERSION, "seed": int(self.config["seed"]),
                "layout": "SPair-71k", "pairs": "all ordered pairs of a category's split images"}
