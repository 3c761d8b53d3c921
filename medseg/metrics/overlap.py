"""Overlap metrics (Dice, IoU, voxel rates) and the empty-mask conventions.

Libraries disagree when a mask is empty, so the convention is explicit and reported:

``brats`` (default, the BraTS challenge rules)
    both masks empty -> Dice 1, HD95 0 mm; exactly one empty -> Dice 0, HD95 373.13 mm (the
    diagonal of the BraTS 240 x 240 x 155 mm volume; ``evaluate.empty_hd_mm`` changes it).
``ignore`` (nnU-Net's and MONAI's ``ignore_empty`` behaviour)
    both empty -> Dice and HD undefined (``None``, left out of the aggregates and counted in
    ``n``); exactly one empty -> Dice 0 and HD undefined (no surface to measure to).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.errors import ConfigError


@dataclass(frozen=True)
class EmptyConvention:
    """Values returned when one or both masks are empty (``None`` = undefined, skipped in aggregates)."""

    both_empty_dice: float | None = 1.0
    both_empty_hd: float | None = 0.0
    one_empty_dice: float | None = 0.0
    one_empty_hd: float | None = 373.13
    name: str = "brats"

    @classmethod
    def named(cls, name: str, one_empty_hd: float = 373.13) -> EmptyConvention:
        """The ``brats`` or ``ignore`` convention (see the module docstring)."""
        if name == "brats":
            return cls(one_empty_hd=float(one_empty_hd))
        if name == "ignore":
            return cls(both_empty_dice=None, both_empty_hd=None, one_empty_dice=0.0, one_empty_hd=None,
                       name="ignore")
        raise ConfigError(f"evaluate.empty_convention={name!r} is not known; valid: brats, ignore")

    def describe(self) -> str:
        """One sentence for reports."""
        def v(x: float | None, unit: str = "") -> str:
            return "undefined (skipped)" if x is None else f"{x:g}{unit}"

        return (f"{self.name}: both masks empty -> Dice {v(self.both_empty_dice)}, HD {v(self.both_empty_hd, ' mm')}; "
                f"one empty -> Dice {v(self.one_empty_dice)}, HD {v(self.one_empty_hd, ' mm')}")


def dice(pred: np.ndarray, ref: np.ndarray, empty: EmptyConvention = EmptyConvention()) -> float | None:
    """Dice similarity coefficient ``2|P∩R| / (|P| + |R|)`` of two boolean masks."""
    p, r = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if p.shape != r.shape:
        raise ValueError(f"pred and ref shapes differ: {p.shape} vs {r.shape}")
    sp, sr = int(p.sum()), int(r.sum())
    if sp == 0 and sr == 0:
        return empty.both_empty_dice
    if sp == 0 or sr == 0:
        return empty.one_empty_dice
    return 2.0 * int(np.logical_and(p, r).sum()) / (sp + sr)


def confusion(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int, int]:
    """``(TP, FP, FN, TN)`` voxel counts of two boolean masks."""
    p, r = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if p.shape != r.shape:
        raise ValueError(f"pred and ref shapes differ: {p.shape} vs {r.shape}")
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(r)) - tp
    return tp, fp, fn, p.size - tp - fp - fn


def iou(pred: np.ndarray, ref: np.ndarray, empty: EmptyConvention = EmptyConvention()) -> float | None:
    """Jaccard index ``|P∩R| / |P∪R|``; empty masks follow the Dice values of ``empty``."""
    tp, fp, fn, _ = confusion(pred, ref)
    if tp + fp + fn == 0:
        return empty.both_empty_dice
    if tp + fp == 0 or tp + fn == 0:
        return empty.one_empty_dice
    return tp / (tp + fp + fn)


def rates(pred: np.ndarray, ref: np.ndarray) -> dict[str, float | None]:
    """Sensitivity ``TP/(TP+FN)``, specificity ``TN/(TN+FP)`` and precision ``TP/(TP+FP)``.

    A rate whose denominator is zero is undefined and returned as ``None`` (sensitivity of an empty
    reference, precision of an empty prediction); aggregation skips it.
    """
    tp, fp, fn, tn = confusion(pred, ref)
    return {"sensitivity": tp / (tp + fn) if tp + fn else None,
            "specificity": tn / (tn + fp) if tn + fp else None,
            "precision": tp / (tp + fp) if tp + fp else None}
