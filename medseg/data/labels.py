"""Label conventions and BraTS regions.

medseg's internal labels follow the Medical Segmentation Decathlon Task01 coding:

==== ======================================== =============================
code MSD Task01 (medseg internal)             BraTS 2018-2021
==== ======================================== =============================
0    background                               background
1    edema                                    necrotic / non-enhancing core
2    non-enhancing tumour (necrotic core)     edema
3    enhancing tumour                         (unused)
4    (unused)                                 enhancing tumour
==== ======================================== =============================

Regions are nested sets of internal labels, as in nnU-Net's region-based training:
whole tumour = {1, 2, 3}, tumour core = {2, 3}, enhancing tumour = {3}.

MONAI's ``ConvertToMultiChannelBasedOnBratsClasses`` assumes the BraTS 2018-2021 coding and is
therefore wrong for MSD Task01 data; medseg maps every source onto the internal coding with an
explicit lookup table (:func:`remap_labels`) instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from medseg.errors import DataError

INTERNAL_LABELS: dict[int, str] = {
    0: "background",
    1: "edema",
    2: "non-enhancing tumour",
    3: "enhancing tumour",
}

BRATS_REGIONS: dict[str, tuple[int, ...]] = {
    "whole_tumour": (1, 2, 3),
    "tumour_core": (2, 3),
    "enhancing_tumour": (3,),
}

#: Internal labels of binary lesion masks (X-ray, any single-structure task).
LESION_LABELS: dict[int, str] = {0: "background", 1: "lesion"}
LESION_REGIONS: dict[str, tuple[int, ...]] = {"lesion": (1,)}

# source code -> internal code, per convention.
CONVENTIONS: dict[str, dict[int, int]] = {
    "msd": {0: 0, 1: 1, 2: 2, 3: 3},
    "brats2021": {0: 0, 1: 2, 2: 1, 4: 3},
    "brats2023": {0: 0, 1: 2, 2: 1, 3: 3},
    # binary masks as written by most tools: 0/1, or 0/255 from PNG and 8-bit exports
    "binary": {0: 0, 1: 1, 255: 1},
}

#: Internal label set each convention maps onto: "brats" (MSD Task01 coding) or "lesion".
CONVENTION_TARGETS: dict[str, str] = {"msd": "brats", "brats2021": "brats", "brats2023": "brats",
                                      "binary": "lesion"}


@dataclass(frozen=True)
class LabelSpec:
    """Names of the internal labels and the regions evaluated over them.

    Args:
        labels: internal code -> name; code 0 is background.
        regions: region name -> tuple of internal codes it contains.
    """

    labels: Mapping[int, str] = field(default_factory=lambda: dict(INTERNAL_LABELS))
    regions: Mapping[str, tuple[int, ...]] = field(default_factory=lambda: dict(BRATS_REGIONS))

    @property
    def num_classes(self) -> int:
        """Number of output channels of a label-wise softmax model (background included)."""
        return max(self.labels) + 1

    @property
    def foreground(self) -> list[int]:
        """Foreground label codes, ascending."""
        return sorted(k for k in self.labels if k != 0)

    def to_json(self) -> dict:
        """Return a JSON-ready description (string keys, lists)."""
        return {
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "regions": {k: list(v) for k, v in self.regions.items()},
        }

    @classmethod
    def from_json(cls, obj: Mapping) -> LabelSpec:
        """Inverse of :meth:`to_json`."""
        labels = {int(k): str(v) for k, v in obj["labels"].items()}
        regions = {str(k): tuple(int(c) for c in v) for k, v in obj["regions"].items()}
        return cls(labels=labels, regions=regions)


def label_spec(convention: str) -> LabelSpec:
    """The internal labels and regions that ``convention``'s codes map onto.

    Raises:
        ConfigError: for an unknown convention.
    """
    if convention not in CONVENTIONS:
        from medseg.errors import ConfigError

        raise ConfigError(f"data.convention={convention!r} is not known; valid: {sorted(CONVENTIONS)}")
    if CONVENTION_TARGETS[convention] == "lesion":
        return LabelSpec(labels=dict(LESION_LABELS), regions=dict(LESION_REGIONS))
    return LabelSpec()


def check_nested(masks: Mapping[str, np.ndarray], order: Sequence[str] = tuple(BRATS_REGIONS),
                 path: str = "<array>") -> None:
    """Check that region masks nest: each region of ``order`` contains the next one.

    For BraTS: enhancing tumour is inside tumour core, which is inside whole tumour. Region-wise
    (sigmoid) outputs and multi-channel reference masks can break this; label maps cannot.

    Raises:
        DataError: naming the two regions and the number of voxels outside the outer one.
    """
    names = [n for n in order if n in masks]
    for outer, inner in zip(names, names[1:]):
        outside = int(np.count_nonzero(masks[inner] & ~masks[outer]))
        if outside:
            raise DataError(path, f"{outside} voxels of {inner} lie outside {outer} "
                                  f"(regions must nest: {' ⊇ '.join(names)})")


def remap_labels(label: np.ndarray, convention: str, path: str = "<array>") -> np.ndarray:
    """Map a label map from a source convention onto the internal coding.

    Args:
        label: integer label map of any shape.
        convention: a key of :data:`CONVENTIONS` (``msd``, ``brats2021``, ``brats2023``).
        path: file name used in error messages.

    Returns:
        ``uint8`` label map in internal codes.

    Raises:
        DataError: when the map holds values the convention does not define.
    """
    try:
        table = CONVENTIONS[convention]
    except KeyError as e:
        raise DataError(path, f"unknown label convention {convention!r}; "
                              f"expected one of {sorted(CONVENTIONS)}") from e
    values = np.unique(label)
    unknown = [v for v in values.tolist() if v not in table]
    if unknown:
        raise DataError(path, f"label values {unknown} are not in the {convention} convention "
                              f"(allowed: {sorted(table)})")
    lut = np.zeros(int(max(max(table), values.max(initial=0))) + 1, dtype=np.uint8)
    for src, dst in table.items():
        lut[src] = dst
    return lut[label.astype(np.int64)]


def region_masks(label: np.ndarray, regions: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Return a boolean mask per region of an internal label map."""
    return {name: np.isin(label, list(codes)) for name, codes in regions.items()}
