"""Per-case quality control: input-quality and output signals, thresholds from the validation
cases, a score and a ``review`` flag with the reasons in words.

Signals of a case (each ``>= 0``, larger is worse):

- ``intensity:<channel>``: the largest distance of the channel's non-zero intensity statistics
  (mean, std, 0.5/50/99.5th percentiles) from the training fingerprint's, each in units of that
  statistic's spread between the training cases (``nonzero_spread``; fingerprints written before it
  existed fall back to the within-case intensity standard deviation);
- ``spacing``: the largest ``|log2(spacing / training median spacing)|`` over the three axes;
- ``extent``: the same for the field of view (shape x spacing, mm);
- ``tumour_ml``: the predicted volume of the first region (whole tumour), ml;
- ``outside_brain``: the fraction of predicted tumour voxels outside the brain mask (voxels where
  any channel is non-zero);
- ``entropy``: the mean predictive entropy inside the predicted first region (bits; see
  :mod:`medseg.inference.uncertainty`);
- ``volume_range``: ``(V(p > 0.25) - V(p > 0.75)) / V(p > 0.25)`` of the first region: the share of
  its volume that depends on the threshold;
- and, apart, the **missing contrasts**: channels that are empty or constant.

Thresholds (:func:`fit_thresholds`, recorded in the artifact's ``metadata.json`` under ``qc``)
come from the validation cases at export: the larger of the ``calibration.qc_quantile`` quantile
of each signal over them (1.0: the largest) and a one-sided normal tolerance bound, mean + z * sd
with z for ``calibration.qc_false_flag_rate`` (a handful of validation cases bounds a signal too
tightly on its own: on the demo the largest of 4 flagged every test case); ``spacing`` and ``extent`` never below the training range of the
fingerprint; ``tumour_ml`` never below the quantile of the validation reference volumes.

The record (:func:`qc_record`): ``score``, the largest ratio of a signal to its threshold (capped
at :data:`SCORE_CAP`; a missing contrast scores the cap); ``review`` when the score exceeds 1;
``reasons``, one sentence per signal beyond its threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.io.nifti import write_nifti
from medseg.data.verify import case_stats
from medseg.inference.uncertainty import CaseUncertainty

#: Largest score (a signal whose threshold is 0, a missing contrast).
SCORE_CAP = 10.0
#: File name suffix of a case's uncertainty map (``<case>_uncertainty.nii.gz``).
UNCERTAINTY_SUFFIX = "_uncertainty.nii.gz"
STATS = ("mean", "std", "p00_5", "p50", "p99_5")


def qc_fingerprint(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """What QC keeps of the training fingerprint: per-channel non-zero intensity statistics and
    the spacing and shape distributions."""
    return {"intensity": {ch: v.get("nonzero") for ch, v in fingerprint["intensity"].items()},
            "intensity_spread": {ch: v.get("nonzero_spread") for ch, v in fingerprint["intensity"].items()},
            "spacing_mm": fingerprint["spacing_mm"], "shape": fingerprint["shape"]}


def _log2_ratio(value: Sequence[float], reference: Sequence[float]) -> float:
    return float(np.max(np.abs(np.log2(np.maximum(np.asarray(value, float), 1e-9)
                                       / np.maximum(np.asarray(reference, float), 1e-9)))))


def input_signals(image: np.ndarray, affine: np.ndarray, channels: Sequence[str],
                  fingerprint: Mapping[str, Any] | None) -> tuple[dict[str, float], list[str]]:
    """Input-quality signals of a raw ``(C, X, Y, Z)`` case and its missing contrasts.

    Args:
        image: the case as read.
        affine: voxel -> RAS affine (mm).
        channels: channel names in input order.
        fingerprint: :func:`qc_fingerprint` of the training data (``None``: missing contrasts only).
    """
    stats = case_stats(image, None, affine)
    signals: dict[str, float] = {}
    missing = []
    for ch, st in zip(channels, stats["channels"]):
        st, ref = st["nonzero"], (fingerprint or {}).get("intensity", {}).get(ch)
        if st is None or st["std"] == 0.0:
            missing.append(ch)
        elif ref:
            spread = (fingerprint or {}).get("intensity_spread", {}).get(ch) or {k: ref["std"] for k in STATS}
            signals[f"intensity:{ch}"] = max(abs(st[k] - ref[k]) / max(spread[k], 1e-6) for k in STATS)
    if fingerprint is None:
        return signals, missing
    sp_med, sh_med = fingerprint["spacing_mm"]["median"], fingerprint["shape"]["median"]
    signals["spacing"] = _log2_ratio(stats["spacing"], sp_med)
    signals["extent"] = _log2_ratio(np.multiply(stats["shape"], stats["spacing"]), np.multiply(sh_med, sp_med))
    return signals, missing


def output_signals(image: np.ndarray, label: np.ndarray, uncertainty: CaseUncertainty) -> dict[str, float]:
    """Signals of the prediction: first-region volume, share outside the brain mask, entropy and
    volume range (module docstring)."""
    first = next(iter(uncertainty.regions.values()))
    tumour = label > 0
    brain = (image != 0).any(axis=0)
    outside = float((tumour & ~brain).sum() / tumour.sum()) if tumour.any() else 0.0
    p25 = first["volume_p25_ml"]
    return {"tumour_ml": first["volume_ml"], "outside_brain": outside, "entropy": first["mean_entropy_bits"],
            "volume_range": first["volume_range_ml"] / p25 if p25 > 0 else 0.0}


def fit_thresholds(signals: Sequence[Mapping[str, float]], fingerprint: Mapping[str, Any], quantile: float,
                   reference_tumour_ml: Sequence[float] = (), false_flag_rate: float | None = None
                   ) -> dict[str, float]:
    """Per signal, the ``quantile`` of its values over the validation cases, or the normal
    tolerance bound for ``false_flag_rate`` when larger (module docstring).

    Raises:
        ValueError: no case, or a quantile outside [0, 1].
    """
    if not signals:
        raise ValueError("QC thresholds need at least one validation case")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"calibration.qc_quantile={quantile} must be in [0, 1]")
    keys = sorted({k for s in signals for k in s})
    out = {k: _threshold([s[k] for s in signals if k in s], quantile, false_flag_rate) for k in keys}
    sp, sh = fingerprint["spacing_mm"], fingerprint["shape"]
    out["spacing"] = max(out.get("spacing", 0.0), _log2_ratio(sp["min"], sp["median"]),
                         _log2_ratio(sp["max"], sp["median"]))
    fov = np.multiply(sh["median"], sp["median"])
    out["extent"] = max(out.get("extent", 0.0), _log2_ratio(np.multiply(sh["min"], sp["min"]), fov),
                        _log2_ratio(np.multiply(sh["max"], sp["max"]), fov))
    if len(reference_tumour_ml):
        out["tumour_ml"] = max(out.get("tumour_ml", 0.0),
                               float(np.quantile(reference_tumour_ml, quantile, method="higher")))
    return out


def _threshold(values: Sequence[float], quantile: float, false_flag_rate: float | None) -> float:
    """The ``quantile`` of ``values``, raised to mean + z * sd (``z``: the normal quantile of
    ``1 - false_flag_rate``) when that is larger."""
    v = np.asarray(values, dtype=float)
    limit = float(np.quantile(v, quantile, method="higher"))
    if false_flag_rate is None or v.size < 2:
        return limit
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1.0 - false_flag_rate)
    return max(limit, float(v.mean() + z * v.std(ddof=1)))


def _reason(key: str, value: float, limit: float, region: str) -> str:
    """One sentence for a signal beyond its threshold."""
    if key.startswith("intensity:"):
        return (f"{key.split(':', 1)[1]} intensity statistics are {value:.2f} between-case SDs from the training "
                f"fingerprint "
                f"(validation cases up to {limit:.2f})")
    if key in ("spacing", "extent"):
        what = "voxel spacing" if key == "spacing" else "field of view"
        return (f"{what} is x{2 ** min(value, 60):.2f} off the training median (training/validation up to "
                f"x{2 ** min(limit, 60):.2f})")
    if key == "tumour_ml":
        return f"predicted {region} volume {value:.1f} ml is larger than any validation case ({limit:.1f} ml)"
    if key == "outside_brain":
        return (f"{100 * value:.1f}% of the predicted tumour lies outside the brain mask (validation cases up to "
                f"{100 * limit:.1f}%)")
    if key == "entropy":
        return f"mean entropy inside the predicted {region} is {value:.3f} bits (validation cases up to {limit:.3f})"
    if key == "volume_range":
        return (f"{100 * value:.0f}% of the {region} volume lies between p>0.25 and p>0.75 (validation cases up "
                f"to {100 * limit:.0f}%)")
    return f"{key} = {value:.3g} above its validation threshold {limit:.3g}"


def qc_record(signals: Mapping[str, float], missing: Sequence[str], uncertainty: CaseUncertainty | None,
              thresholds: Mapping[str, float] | None) -> dict[str, Any]:
    """The ``qc`` record of a case (module docstring); without ``thresholds`` (an artifact exported
    without validation cases) ``score`` is ``None`` and only missing contrasts set ``review``."""
    region = next(iter(uncertainty.regions)) if uncertainty is not None else "tumour"
    reasons = [f"contrast {ch} is missing (empty or constant)" for ch in missing]
    ratios = [SCORE_CAP] * len(missing)
    for key, value in signals.items():
        limit = (thresholds or {}).get(key)
        if limit is None:
            continue
        ratio = value / limit if limit > 0 else (0.0 if value <= 0 else SCORE_CAP)
        ratios.append(min(ratio, SCORE_CAP))
        if ratio > 1.0 + 1e-6:  # beyond numerical noise between backends
            reasons.append(_reason(key, value, limit, region.replace("_", " ")))
    score = max(ratios, default=0.0) if thresholds is not None else (SCORE_CAP if missing else None)
    return {"score": score, "review": bool(reasons), "reasons": reasons,
            "signals": {k: float(v) for k, v in signals.items()}, "missing_contrasts": list(missing),
            "uncertainty": uncertainty.to_json() if uncertainty is not None else None}


def case_qc(image: np.ndarray, affine: np.ndarray, label: np.ndarray, uncertainty: CaseUncertainty,
            reference: Mapping[str, Any] | None, channels: Sequence[str]) -> dict[str, Any]:
    """The ``qc`` record of a predicted case against the artifact's QC reference (``fingerprint``
    and ``thresholds``; ``None``: signals without thresholds)."""
    signals, missing = input_signals(image, affine, channels, reference["fingerprint"] if reference else None)
    signals.update(output_signals(image, label, uncertainty))
    return qc_record(signals, missing, uncertainty, reference.get("thresholds") if reference else None)


def case_review(name: str, image: np.ndarray, affine: np.ndarray, like: Any, label: np.ndarray,
                uncertainty: CaseUncertainty | None, metadata: Mapping[str, Any], out_dir: Path,
                write_map: bool) -> dict[str, Any]:
    """The review items of a predicted case's ``predictions.json`` record: ``qc`` (against the
    artifact's ``metadata["qc"]``) and, with ``write_map``, ``uncertainty_map``: the entropy map
    written to ``<case>_uncertainty.nii.gz`` on the input grid (float32, bits)."""
    if uncertainty is None:
        return {}
    channels = metadata["input"]["preprocessing"]["channels"]
    out: dict[str, Any] = {"qc": case_qc(image, affine, label, uncertainty, metadata.get("qc"), channels)}
    if write_map:
        path = out_dir / f"{name}{UNCERTAINTY_SUFFIX}"
        write_nifti(path, uncertainty.map.astype(np.float32), affine, like=like)
        out["uncertainty_map"] = str(path)
    return out


def batch_review(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The batch summary's ``qc``: cases to review (most suspicious first) with their reasons."""
    checked = [r for r in records if r.get("qc")]
    flagged = sorted((r for r in checked if r["qc"]["review"]), key=lambda r: -(r["qc"]["score"] or 0.0))
    return {"n_checked": len(checked), "n_review": len(flagged),
            "review": [{"case": r["case"], "score": r["qc"]["score"], "reasons": r["qc"]["reasons"]} for r in flagged],
            "score": "largest ratio of a QC signal to its validation threshold (> 1: review); see the README"}
