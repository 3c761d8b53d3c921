"""How well the per-case QC score finds the worst cases: ROC AUC of the score against
``Dice < review_dice`` per region, and the Dice of the flagged against the unflagged cases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medseg.metrics.detection import roc_auc


def qc_ranking(records: Sequence[Mapping[str, Any]], qc: Mapping[str, Mapping[str, Any]],
               regions: Sequence[str], review_dice: float) -> dict[str, Any]:
    """Per region: cases, bad cases (Dice below ``review_dice``), the ROC AUC of the QC score for
    being bad (``None`` when all or none are bad), mean Dice of flagged and unflagged cases, and how
    many bad cases the flag catches and how many good ones it flags.

    Args:
        records: scored cases (``case`` and ``metrics`` per region with ``dice``).
        qc: the QC record of each predicted case (``score``, ``review``), by case name.
        regions: the regions scored.
        review_dice: the Dice under which a case counts as bad.
    """
    rows = [(r, qc[r["case"]]) for r in records if r.get("metrics") is not None and r["case"] in qc
            and qc[r["case"]].get("score") is not None]
    out: dict[str, Any] = {"review_dice": float(review_dice), "n_cases": len(rows),
                           "n_flagged": sum(bool(q["review"]) for _, q in rows), "regions": {}}
    for region in regions:
        pairs = [(r["metrics"][region]["dice"], q) for r, q in rows if r["metrics"][region]["dice"] is not None]
        bad = [d < review_dice for d, _ in pairs]
        flagged = [bool(q["review"]) for _, q in pairs]
        dice_f = [d for (d, _), f in zip(pairs, flagged) if f]
        dice_u = [d for (d, _), f in zip(pairs, flagged) if not f]
        out["regions"][region] = {
            "n": len(pairs), "n_bad": int(sum(bad)),
            "roc_auc": roc_auc([q["score"] for _, q in pairs], bad) if any(bad) and not all(bad) else None,
            "dice_flagged": float(np.mean(dice_f)) if dice_f else None,
            "dice_unflagged": float(np.mean(dice_u)) if dice_u else None,
            "flagged_bad": int(sum(b and f for b, f in zip(bad, flagged))),
            "flagged_good": int(sum(f and not b for b, f in zip(bad, flagged)))}
    return out
