"""CUB-200-2011 (Wah et al. 2011) read from its native layout, with corrbench's frozen pair protocol.

::

    CUB_200_2011/
      images/<NNN.Class_Name>/<Image_Name>.jpg
      images.txt  image_class_labels.txt  train_test_split.txt  bounding_boxes.txt  classes.txt
      parts/parts.txt  parts/part_locs.txt

All ids are 1-based. Boxes are ``x y w h`` (converted to ``l t r b = x, y, x + w, y + h``); part
locations are used as written (the dataset does not say whether they are 0- or 1-based).

There is no published CUB pair list for the DHF paper, so corrbench defines one
(docs/datasets.md#cub-200-2011): of the split's images, every **ordered** pair of distinct images of one
class with at least one part visible in both, enumerated sorted by (source image id, target image id), shuffled with
``numpy.random.default_rng(seed).permutation`` (seed 0) and the first ``num_pairs`` (360) taken,
without replacement. Only mutually visible parts are kept, in part-id order; images are uncropped;
the PCK threshold is the target bounding box. The list is written once, atomically, as a DHF-schema
JSON under ``<root>/.corrbench/cub/`` (or the user cache when the dataset folder is read-only) with a
sidecar recording the rule and checksums, and reused on later runs.

``cub.crop=bbox`` (not the paper's protocol) adds the ACSM-style crop that ASIC's ``datasets/cub.py``
describes (docs/datasets.md#cub-crops) on top of that list: see
:func:`crop_geometry` and :func:`ensure_cropped`. Each image the list uses is cropped once to a 256 × 256
PNG and a second DHF-schema list with the transformed keypoints and boxes points at the crops; both live
in a folder beside the list (``<list stem>.crop-bbox-v1/``) and are reused on later runs.

"""

from __future__ import annotations

from .annotations import CUB_URL, EXPECTED, PROTOCOL_RULE, PROTOCOL_VERSION, REQUIRED_FILES, CubAnnotations, read_cub
from .crops import CROP_MODES, CROP_PAD, CROP_RULE, CROP_SIZE, CROP_VERSION, CropResult, crop_box, crop_folder_name, crop_geometry, crop_image, crop_points, ensure_cropped
from .dataset import CUBDataset
from .pairs import candidate_pairs, ensure_pair_list, make_pair_list, pair_list_name

__all__ = ["CROP_MODES", "CROP_PAD", "CROP_RULE", "CROP_SIZE", "CROP_VERSION", "CUB_URL", "EXPECTED",
           "PROTOCOL_RULE", "PROTOCOL_VERSION", "REQUIRED_FILES", "CropResult", "CUBDataset", "CubAnnotations", "candidate_pairs", "crop_box", "crop_folder_name", "crop_geometry",
           "crop_image", "crop_points", "ensure_cropped", "ensure_pair_list", "make_pair_list", "pair_list_name",
           "read_cub"]
