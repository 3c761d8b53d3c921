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

BraTS 2024+ (the label groups of ``brats-evaluation``'s per-task configs) add internal code 4:

================ =========================================== ==================================
convention       source codes -> internal                    regions (beyond WT ⊇ TC ⊇ ET)
================ =========================================== ==================================
brats2024_gli    1 NETC->2, 2 SNFH->1, 3 ET->3, 4 RC->4       NETC {2}, SNFH {1}, RC {4}
brats2024_met    as brats2024_gli                            RC {4}
brats2024_men    as brats2023                                (none)
brats2024_ped    1 ET->3, 2 NETC->2, 3 CC->4, 4 ED->1         NETC {2}, CC {4}, ED {1}; TC {2,3,4}
brats2024_menrt  1 GTV->1                                    gross tumour volume only
================ =========================================== ==================================

The resection cavity (RC, post-treatment glioma and metastases) is part of no tumour region:
WT = ET+NETC+SNFH and TC = ET+NETC, as in BraTS 2024; it is scored as a region of its own.

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

# BraTS 2024+ label sets (the label groups of brats-evaluation's per-task configs). The nested
# chain whole tumour ⊇ tumour core ⊇ enhancing tumour comes first; the other regions follow.
#: BraTS 2024 post-treatment glioma (GLI): 1 NETC, 2 SNFH, 3 ET, 4 resection cavity (RC). The
#: cavity belongs to no tumour region: WT = ET+NETC+SNFH, TC = ET+NETC; RC is scored on its own.
POST_TREATMENT_LABELS: dict[int, str] = {**INTERNAL_LABELS, 4: "resection cavity"}
POST_TREATMENT_REGIONS: dict[str, tuple[int, ...]] = {
    **BRATS_REGIONS, "non_enhancing_core": (2,), "surrounding_hyperintensity": (1,), "resection_cavity": (4,)}
#: BraTS metastases (MET, brats-evaluation ``mets``): GLI 2024 codes; regions ET, RC, TC, WT.
METASTASIS_REGIONS: dict[str, tuple[int, ...]] = {**BRATS_REGIONS, "resection_cavity": (4,)}
#: BraTS 2024 paediatric (PED): 1 ET, 2 NETC, 3 cystic component (CC), 4 edema (ED);
#: TC = ET+NETC+CC, WT = TC+ED.
PAEDIATRIC_LABELS: dict[int, str] = {**INTERNAL_LABELS, 4: "cystic component"}
PAEDIATRIC_REGIONS: dict[str, tuple[int, ...]] = {
    "whole_tumour": (1, 2, 3, 4), "tumour_core": (2, 3, 4), "enhancing_tumour": (3,),
    "non_enhancing_core": (2,), "cystic_component": (4,), "edema": (1,)}
#: BraTS 2024 meningioma radiotherapy (MEN-RT): one gross tumour volume label.
GTV_LABELS: dict[int, str] = {0: "background", 1: "gross tumour volume"}
GTV_REGIONS: dict[str, tuple[int, ...]] = {"gross_tumour_volume": (1,)}

#: BraTS' own short names of the regions (brats-evaluation's label groups).
BRATS_GROUP_NAMES: dict[str, str] = {
    "whole_tumour": "wt", "tumour_core": "tc", "enhancing_tumour": "et", "non_enhancing_core": "netc",
    "surrounding_hyperintensity": "snfh", "resection_cavity": "rc", "cystic_component": "cc", "edema": "ed",
    "gross_tumour_volume": "gtv"}

#: Label set name -> (internal code -> name, region -> internal codes).
LABEL_SETS: dict[str, tuple[dict[int, str], dict[str, tuple[int, ...]]]] = {
    "brats": (INTERNAL_LABELS, BRATS_REGIONS),
    "lesion": (LESION_LABELS, LESION_REGIONS),
    "post_treatment": (POST_TREATMENT_LABELS, POST_TREATMENT_REGIONS),
    "metastasis": (POST_TREATMENT_LABELS, METASTASIS_REGIONS),
    "paediatric": (PAEDIATRIC_LABELS, PAEDIATRIC_REGIONS),
    "gtv": (GTV_LABELS, GTV_REGIONS),
}

_GLI_2023 = {0: 0, 1: 2, 2: 1, 3: 3}
# source code -> internal code, per convention.
CONVENTIONS: dict[str, dict[int, int]] = {
    "msd": {0: 0, 1: 1, 2: 2, 3: 3},
    "brats2021": {0: 0, 1: 2, 2: 1, 4: 3},
    "brats2023": dict(_GLI_2023),
    # binary masks as written by most tools: 0/1, or 0/255 from PNG and 8-bit exports
    "binary": {0: 0, 1: 1, 255: 1},
    "brats2024_gli": {**_GLI_2023, 4: 4},  # post-treatment glioma: + resection cavity
    "brats2024_met": {**_GLI_2023, 4: 4},  # metastases: GLI 2024 codes, regions ET, RC, TC, WT
    "brats2024_men": dict(_GLI_2023),  # pre-operative meningioma: 2023 codes, regions ET, TC, WT
    "brats2024_ped": {0: 0, 1: 3, 2: 2, 3: 4, 4: 1},  # paediatric: ET, NETC, CC, ED
    "brats2024_menrt": {0: 0, 1: 1},  # meningioma radiotherapy: gross tumour volume
    # internal codes of the five-label sets (how evaluate writes their predictions)
    "internal": {0: 0, 1: 1, 2: 2, 3: 3, 4: 4},
}

#: Label set (a key of :data:`LABEL_SETS`) each user convention maps onto.
CONVENTION_TARGETS: dict[str, str] = {
    "msd": "brats", "brats2021": "brats", "brats2023": "brats", "binary": "lesion",
    "brats2024_gli": "post_treatment", "brats2024_met": "metastasis", "brats2024_men": "brats",
    "brats2024_ped": "paediatric", "brats2024_menrt": "gtv"}

#: The brats-evaluation config (its per-task label groups) of each convention's task.
BRATS_EVALUATION_TASKS: dict[str, str] = {
    "msd": "gli", "brats2021": "gli", "brats2023": "gli", "brats2024_gli": "gli", "brats2024_met": "mets",
    "brats2024_men": "MenPre", "brats2024_ped": "ped", "brats2024_menrt": "MenRT", "binary": "MenRT"}


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
    if convention not in CONVENTION_TARGETS:
        from medseg.errors import ConfigError

        raise ConfigError(f"data.convention={convention!r} is not known; valid: {sorted(CONVENTION_TARGETS)}")
    labels, regions = LABEL_SETS[CONVENTION_TARGETS[convention]]
    return LabelSpec(labels=dict(labels), regions=dict(regions))


def internal_convention(labels: LabelSpec) -> str:
    """The label coding that is the identity on ``labels``' internal codes (how ``evaluate`` writes
    its predictions): ``binary`` for one-label sets, ``msd`` for the BraTS label set, ``internal``
    for the five-label BraTS 2024+ sets."""
    codes = set(labels.labels)
    if codes <= {0, 1}:
        return "binary"
    return "msd" if codes <= set(CONVENTIONS["msd"]) else "internal"


def nested_chain(regions: Mapping[str, Sequence[int]]) -> tuple[str, ...]:
    """The regions, in order, that each lie inside the one kept before (by their codes): for the
    BraTS sets whole tumour ⊇ tumour core ⊇ enhancing tumour; single-label regions outside the
    chain (resection cavity, edema, ...) are left out."""
    chain: list[str] = []
    for name, codes in regions.items():
        if not chain or set(codes) <= set(regions[chain[-1]]):
            chain.append(name)
    return tuple(chain)


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


def output_codes(convention: str) -> dict[int, int]:
    """Internal code -> code of ``convention``: the inverse of :data:`CONVENTIONS` (where several
    file codes map onto one internal code, e.g. binary 1 and 255, the smallest is written).

    Raises:
        ConfigError: for an unknown convention.
    """
    if convention not in CONVENTIONS:
        from medseg.errors import ConfigError

        raise ConfigError(f"label coding {convention!r} is not known; valid: {sorted(CONVENTIONS)}")
    inverse: dict[int, int] = {}
    for src, dst in sorted(CONVENTIONS[convention].items()):
        inverse.setdefault(dst, src)
    return inverse


def encode_labels(label: np.ndarray, convention: str, path: str = "<array>") -> np.ndarray:
    """Map an internal label map onto ``convention``'s codes (inverse of :func:`remap_labels`).

    Returns:
        ``uint8`` label map in the convention's codes.

    Raises:
        DataError: the map holds internal codes the convention cannot express.
    """
    table = output_codes(convention)
    values = np.unique(label).tolist()
    unknown = [v for v in values if v not in table]
    if unknown:
        raise DataError(path, f"internal labels {unknown} have no code in the {convention} convention "
                              f"(it codes {sorted(table)})")
    lut = np.zeros(max(max(table), *values, 0) + 1, dtype=np.uint8)
    for internal, code in table.items():
        lut[internal] = code
    return lut[label.astype(np.int64)]


def region_masks(label: np.ndarray, regions: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Return a boolean mask per region of an internal label map."""
    return {name: np.isin(label, list(codes)) for name, codes in regions.items()}


def five_label_coding(input_convention: str, labels: LabelSpec) -> str:
    """How to write a BraTS 2024+ model's label maps: the input's own convention when it codes
    exactly these labels (e.g. ``brats2024_gli``), else the internal codes (``internal``)."""
    if input_convention in CONVENTION_TARGETS and label_spec(input_convention).labels == dict(labels.labels):
        return input_convention
    return internal_convention(labels)
