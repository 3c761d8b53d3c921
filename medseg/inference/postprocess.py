"""Relabelling a small predicted enhancing tumour, with the threshold fitted on validation cases.

A glioma without an enhancing part, and a tumour-free case, score enhancing-tumour Dice 0 for one
predicted enhancing voxel and 1 for none (the BraTS empty-mask convention), so a few false
enhancing voxels cost a third of such a case's mean region Dice. nnU-Net's BraTS entries (Isensee
et al., BraTS 2020) answer this with a rule chosen on their cross-validation: when a case's
predicted enhancing tumour totals less than a threshold, it is relabelled as (non-enhancing)
tumour core. Tumour core and whole tumour are unchanged; only the enhancing region empties.

medseg fits the threshold on the validation split (:func:`fit_enhancing_threshold`): the candidate
of :data:`CANDIDATES_ML` with the highest mean enhancing-tumour Dice of the validation cases as
``predict`` would write them, the smallest on a tie, and none (0: off) unless it gains. ``export``
records it in the artifact (``metadata.json`` ``postprocessing``, with the per-case evidence),
``evaluate`` fits the same before scoring the test cases, and every runner (``predict``,
``medseg-predict``, the MONAI bundle, the BraTS container) applies it after the small-component
removal. An ensemble of cross-validation folds refits it on the pooled validation cases of all its
members (:func:`pooled_enhancing_fit`), as nnU-Net chooses its post-processing on the out-of-fold
predictions of the whole cross-validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medseg.data.labels import LabelSpec

#: Thresholds tried on the validation cases (ml of predicted enhancing tumour per case). nnU-Net's
#: BraTS 2020 rule used 200-750 voxels at 1 mm (0.2-0.75 ml); the grid spans a quarter to ten times that.
CANDIDATES_ML: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class EnhancingRule:
    """Which codes form the enhancing tumour and which core code replaces them.

    Example:
        >>> rule = EnhancingRule.for_labels(LabelSpec())  # MSD Task01 coding: 3 enhancing, 2 non-enhancing
        >>> rule
        EnhancingRule(codes=(3,), replacement=2)
        >>> label = np.zeros((4, 4, 4), np.uint8); label[0, 0, :2] = 3; label[1, 1, 1] = 1
        >>> rule.apply(label, voxel_ml=0.1, min_ml=0.5)[0, 0, :3].tolist()  # 0.2 ml < 0.5 ml: relabelled
        [2, 2, 0]
        >>> int(rule.apply(label, voxel_ml=0.1, min_ml=0.2)[0, 0, 0])  # 0.2 ml is not under 0.2 ml: kept
        3
    """

    codes: tuple[int, ...]
    replacement: int

    @classmethod
    def for_labels(cls, labels: LabelSpec) -> EnhancingRule | None:
        """The rule for a label set with ``enhancing_tumour`` inside ``tumour_core``: the enhancing
        codes become the smallest other core code (non-enhancing core in every BraTS coding medseg
        maps); ``None`` for label sets without both regions (lesion masks, gross tumour volume)."""
        enhancing, core = labels.regions.get("enhancing_tumour"), labels.regions.get("tumour_core")
        if not enhancing or not core:
            return None
        rest = sorted(c for c in core if c not in enhancing)
        return cls(tuple(int(c) for c in enhancing), int(rest[0])) if rest else None

    def volume_ml(self, label: np.ndarray, voxel_ml: float) -> float:
        """Predicted enhancing-tumour volume of ``label`` (ml)."""
        return float(np.isin(label, self.codes).sum()) * float(voxel_ml)

    def apply(self, label: np.ndarray, voxel_ml: float, min_ml: float) -> np.ndarray:
        """``label`` with its enhancing voxels relabelled if they total less than ``min_ml`` ml
        (a new array when relabelled; ``label`` itself otherwise)."""
        if min_ml <= 0:
            return label
        mask = np.isin(label, self.codes)
        count = int(mask.sum())
        if count == 0 or count * float(voxel_ml) >= min_ml:
            return label
        out = label.copy()
        out[mask] = self.replacement
        return out


@dataclass(frozen=True)
class EnhancingSample:
    """One validation case as the fit sees it: predicted and reference enhancing volume (ml) and the
    enhancing-tumour Dice of the prediction without the rule (BraTS convention: 1 when both are
    empty, 0 when one is)."""

    case: str
    pred_ml: float
    ref_ml: float
    dice: float

    @classmethod
    def from_record(cls, record: Sequence) -> EnhancingSample:
        """The sample of one row of a fit's ``samples`` (``[case, pred_ml, ref_ml, dice]``)."""
        case, pred_ml, ref_ml, dice = record
        return cls(str(case), float(pred_ml), float(ref_ml), float(dice))

    def record(self) -> list:
        """The row :func:`fit_enhancing_threshold` keeps in its ``samples`` (6 decimals)."""
        return [self.case, round(self.pred_ml, 6), round(self.ref_ml, 6), round(self.dice, 6)]

    def dice_with(self, min_ml: float) -> float:
        """The case's enhancing-tumour Dice once the rule with threshold ``min_ml`` has run."""
        if 0 < self.pred_ml < min_ml:
            return 1.0 if self.ref_ml == 0 else 0.0
        return self.dice


def enhancing_sample(case: str, pred: np.ndarray, ref: np.ndarray, rule: EnhancingRule,
                     voxel_ml: float) -> EnhancingSample:
    """The :class:`EnhancingSample` of a predicted and a reference label map on one grid (the Dice
    written out here: ``medseg.inference`` does not import ``medseg.metrics``)."""
    p, r = np.isin(pred, rule.codes), np.isin(ref, rule.codes)
    sp, sr = int(p.sum()), int(r.sum())
    dice = 1.0 if sp == sr == 0 else 2.0 * int((p & r).sum()) / (sp + sr)
    return EnhancingSample(case, sp * float(voxel_ml), sr * float(voxel_ml), dice)


def fit_enhancing_threshold(samples: Sequence[EnhancingSample],
                            candidates: Sequence[float] = CANDIDATES_ML) -> dict:
    """Choose the rule's threshold on validation cases.

    The candidate with the highest mean enhancing-tumour Dice over ``samples``, the smallest of
    equal ones; 0 (the rule off) unless that mean is above the one without the rule.

    Returns:
        ``min_enhancing_ml`` (the threshold, 0: off), ``n_cases``, ``mean_dice_before`` /
        ``mean_dice_after`` (enhancing tumour, the validation cases), ``cases_relabelled``
        (``{case: predicted ml}`` for the threshold), ``candidates_ml``, ``method`` and ``samples``
        (each case's :meth:`EnhancingSample.record`, the evidence a pooled refit needs).

    Example:
        >>> s = [EnhancingSample("absent", 0.3, 0.0, 0.0), EnhancingSample("small", 0.9, 1.2, 0.7),
        ...      EnhancingSample("large", 8.0, 9.0, 0.9)]
        >>> fit = fit_enhancing_threshold(s)
        >>> fit["min_enhancing_ml"], fit["cases_relabelled"], round(fit["mean_dice_after"], 3)
        (0.5, {'absent': 0.3}, 0.867)
        >>> fit_enhancing_threshold(s[1:])["min_enhancing_ml"]  # nothing to gain: off
        0.0
    """
    def mean(t: float) -> float:
        return float(np.mean([s.dice_with(t) for s in samples])) if samples else float("nan")

    best = 0.0
    for t in sorted(float(c) for c in candidates):
        if samples and mean(t) > mean(best) + 1e-12:
            best = t
    return {"min_enhancing_ml": best, "n_cases": len(samples), "mean_dice_before": mean(0.0),
            "mean_dice_after": mean(best),
            "cases_relabelled": {s.case: round(s.pred_ml, 4) for s in samples if 0 < s.pred_ml < best},
            "candidates_ml": [float(c) for c in candidates],
            "method": "enhancing tumour relabelled as tumour core where its predicted volume in the case is under "
                      "min_enhancing_ml; the threshold with the highest mean enhancing-tumour Dice of the "
                      "validation cases (smallest on ties, 0 without a gain)",
            "samples": [s.record() for s in samples]}


def pooled_enhancing_fit(fits: Sequence[dict | None]) -> dict | None:
    """The threshold refitted on the validation cases of several models together.

    An ensemble of cross-validation folds holds one fit per fold, each on its own validation cases
    and each model's own predictions of them (the out-of-fold predictions); pooled, they are the
    evidence of every training case. The candidates are those of the first fit. Cases that several
    fits share (an ensemble of seeds on one split) count once per model.

    Returns:
        :func:`fit_enhancing_threshold` of the pooled samples, with ``members`` (how many fits),
        or ``None`` when a fit is missing or carries no ``samples`` (a configured threshold, or an
        artifact exported before the samples were recorded).

    Example:
        >>> a = fit_enhancing_threshold([EnhancingSample("a1", 0.3, 0.0, 0.0), EnhancingSample("a2", 5, 6, 0.9)])
        >>> b = fit_enhancing_threshold([EnhancingSample("b1", 0.4, 0.5, 0.8), EnhancingSample("b2", 7, 7, 0.9)])
        >>> a["min_enhancing_ml"], b["min_enhancing_ml"]  # a: a false speck, b: a true small one
        (0.5, 0.0)
        >>> pooled = pooled_enhancing_fit([a, b])  # 0.5 ml gains 1 on a1, loses 0.8 on b1
        >>> pooled["min_enhancing_ml"], pooled["n_cases"], pooled["members"]
        (0.5, 4, 2)
        >>> pooled_enhancing_fit([a, None]) is None
        True
    """
    if not fits or any(not f or not f.get("samples") for f in fits):
        return None
    samples = [EnhancingSample.from_record(r) for f in fits for r in f["samples"]]
    pooled = fit_enhancing_threshold(samples, fits[0].get("candidates_ml") or CANDIDATES_ML)
    pooled["members"] = len(fits)
    return pooled
