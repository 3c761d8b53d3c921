"""Calibration, uncertainty and per-case QC: temperature fitting, ECE, the entropy definition, QC
flags on shifted inputs, and the artifact round trip of the temperature for every backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.config import Device, InferenceConfig
from medseg.data.fingerprint import fingerprint
from medseg.data.labels import LabelSpec
from medseg.data.verify import case_stats
from medseg.export.artifact import load_artifact
from medseg.export.bundle import calibration_transforms
from medseg.inference.build import build_predictor
from medseg.inference.calibration import apply_temperature, fit_temperature, tumour_band
from medseg.inference.qc import case_qc, fit_thresholds, qc_fingerprint, qc_record
from medseg.inference.runtime import load_input
from medseg.inference.targets import Target
from medseg.inference.uncertainty import CaseUncertainty, entropy_bits, region_probabilities
from medseg.metrics.calibration import ReliabilityBins
from medseg.metrics.review import qc_ranking


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_temperature_fitting_recovers_a_known_softmax_temperature(true_t):
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 3.0, size=(60000, 4))
    p = np.exp(z / true_t)
    p /= p.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p])  # labels drawn from softmax(z / T)
    fit = fit_temperature(z, y, "softmax")
    assert fit["temperature"] == pytest.approx([true_t] * 4, rel=0.05)
    assert fit["nll_after"] <= fit["nll_before"]


def test_temperature_fitting_is_per_region_for_sigmoid_targets():
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 4.0, size=(80000, 2))
    truth = np.array([0.5, 3.0])
    y = (rng.random(z.shape) < 1.0 / (1.0 + np.exp(-z / truth))).astype(np.float32)
    fit = fit_temperature(z, y, "sigmoid")
    assert fit["temperature"] == pytest.approx(truth.tolist(), rel=0.06)


def test_temperature_keeps_labels_and_sharpens_or_softens():
    probs = torch.softmax(torch.randn(4, 6, 5, 3), dim=0)
    sharp = apply_temperature(probs, [0.5] * 4, "softmax")
    torch.testing.assert_close(sharp.sum(dim=0), torch.ones(6, 5, 3))
    assert torch.equal(sharp.argmax(dim=0), probs.argmax(dim=0))
    assert float(sharp.max(dim=0).values.mean()) > float(probs.max(dim=0).values.mean())
    sig = torch.sigmoid(torch.randn(3, 4, 4, 4))
    soft = apply_temperature(sig, [2.0, 2.0, 2.0], "sigmoid")
    assert torch.equal(soft > 0.5, sig > 0.5)
    torch.testing.assert_close(soft, torch.sigmoid(torch.logit(sig) / 2.0), atol=1e-5, rtol=1e-5)


def test_ece_hand_computed():
    bins = ReliabilityBins(10)
    # bin [0.1, 0.2): 4 voxels at 0.15, 1 positive -> |0.25 - 0.15| = 0.10
    # bin [0.9, 1.0]: 4 voxels at 0.95, 4 positive -> |1.00 - 0.95| = 0.05
    bins.add(np.array([0.15] * 4 + [0.95] * 4), np.array([1, 0, 0, 0, 1, 1, 1, 1]))
    assert bins.ece() == pytest.approx(0.5 * 0.10 + 0.5 * 0.05)
    curve = bins.to_json()
    assert curve["count"] == [4, 4] and curve["frequency"] == pytest.approx([0.25, 1.0])
    assert ReliabilityBins(5).ece() is None


def test_tumour_band_is_in_mm():
    mask = np.zeros((21, 1, 1), dtype=bool)
    mask[10] = True
    band = tumour_band([mask], (2.0, 1.0, 1.0), 4.0)  # 2 mm voxels: 2 voxels each side
    assert np.flatnonzero(band[:, 0, 0]).tolist() == [8, 9, 10, 11, 12]


def test_entropy_definition_on_hand_cases():
    labels = torch.tensor([[0.5, 1.0, 0.25], [0.5, 0.0, 0.25], [0.0, 0.0, 0.25], [0.0, 0.0, 0.25]])
    np.testing.assert_allclose(entropy_bits(labels, "softmax").numpy(), [1.0, 0.0, 2.0], atol=1e-5)
    regions = torch.tensor([[0.5, 1.0], [0.5, 0.0], [0.5, 0.0]])
    np.testing.assert_allclose(entropy_bits(regions, "sigmoid").numpy(), [3.0, 0.0], atol=1e-5)
    target = Target("labels", LabelSpec())
    rp = region_probabilities(torch.tensor([[0.1], [0.2], [0.3], [0.4]]), target)  # WT = 1+2+3, TC = 2+3, ET = 3
    np.testing.assert_allclose(rp[:, 0].numpy(), [0.9, 0.7, 0.4], atol=1e-6)


def _uncertainty(volume_ml: float = 10.0, entropy: float = 0.2) -> CaseUncertainty:
    region = {"volume_ml": volume_ml, "volume_p25_ml": volume_ml * 1.1, "volume_p75_ml": volume_ml * 0.9,
              "volume_range_ml": volume_ml * 0.2, "uncertain_ml": 1.0, "mean_entropy_bits": entropy}
    return CaseUncertainty(map=np.zeros((2, 2, 2), np.float32), regions={"whole_tumour": region})


def test_qc_flags_a_shifted_case_and_not_an_in_distribution_one(tiny_dataset):
    files = sorted((tiny_dataset / "imagesTr").glob("*.nii.gz"))
    cases = [load_input(f, 4) for f in files]
    labels = LabelSpec()
    fp = qc_fingerprint(fingerprint([{"stats": case_stats(img, None, aff)} for img, aff in cases[:3]],
                                    ("FLAIR", "T1w", "t1gd", "T2w"), labels))
    channels = list(fp["intensity"])
    validation = [case_qc(img, aff, np.zeros(img.shape[1:], np.uint8), _uncertainty(), {"fingerprint": fp},
                          channels)["signals"] for img, aff in cases[3:]]
    thresholds = fit_thresholds(validation, fp, 1.0)
    reference = {"fingerprint": fp, "thresholds": thresholds}
    image, affine = cases[3]  # a validation case: inside every threshold
    ok = case_qc(image, affine, np.zeros(image.shape[1:], np.uint8), _uncertainty(), reference, channels)
    assert not ok["review"] and ok["reasons"] == [] and ok["score"] <= 1.0
    rng = np.random.default_rng(0)
    noisy = image + rng.normal(0, 0.5 * image[image != 0].std(), image.shape).astype(np.float32)
    shifted = case_qc(noisy, affine, np.zeros(image.shape[1:], np.uint8), _uncertainty(), reference, channels)
    assert shifted["review"] and shifted["score"] > 1.0
    assert any("intensity statistics" in r for r in shifted["reasons"])
    missing = image.copy()
    missing[2] = 0
    gone = case_qc(missing, affine, np.zeros(image.shape[1:], np.uint8), _uncertainty(), reference, channels)
    assert gone["review"] and "contrast t1gd is missing (empty or constant)" in gone["reasons"]
    uncertain = case_qc(image, affine, np.zeros(image.shape[1:], np.uint8), _uncertainty(entropy=5.0), reference,
                        channels)
    assert uncertain["review"] and any("entropy" in r for r in uncertain["reasons"])


def test_qc_without_thresholds_has_no_score():
    record = qc_record({"entropy": 0.3}, [], _uncertainty(), None)
    assert record["score"] is None and record["review"] is False and record["uncertainty"]["regions"]


def test_qc_ranking_auc_and_flag_counts():
    records = [{"case": c, "metrics": {"whole_tumour": {"dice": d}}} for c, d in
               [("a", 0.95), ("b", 0.9), ("c", 0.5), ("d", 0.3)]]
    qc = {"a": {"score": 0.2, "review": False}, "b": {"score": 1.5, "review": True},
          "c": {"score": 0.9, "review": False}, "d": {"score": 3.0, "review": True}}
    r = qc_ranking(records, qc, ["whole_tumour"], 0.8)["regions"]["whole_tumour"]
    # bad: c (0.9), d (3.0); good: a (0.2), b (1.5): pairs won 1 + 2 of 4 -> 0.75
    assert r["roc_auc"] == pytest.approx(0.75) and r["n_bad"] == 2
    assert (r["flagged_bad"], r["flagged_good"]) == (1, 1)
    assert r["dice_flagged"] == pytest.approx(0.6) and r["dice_unflagged"] == pytest.approx(0.725)


def test_bundle_applies_the_temperature_as_medseg_does():
    monai = pytest.importorskip("monai")
    meta = {"output": {"mode": "labels"}, "calibration": {"temperature": [2.0] * 4}}
    (transform,) = calibration_transforms(meta)
    from monai.bundle import ConfigParser

    parser = ConfigParser({"t": transform})
    lam = parser.get_parsed_content("t")
    probs = torch.softmax(torch.randn(4, 3, 3, 3), dim=0)
    out = lam({"pred": probs})["pred"]
    torch.testing.assert_close(out, apply_temperature(probs, [2.0] * 4, "softmax"), atol=1e-5, rtol=1e-5)
    assert calibration_transforms({"output": {"mode": "labels"}}) == [] and monai


def test_run_records_calibration_qc_and_uncertainty(run_dir: Path, tiny_dataset: Path, tmp_path: Path):
    """The tiny ``medseg run``: the artifact carries the temperature and the QC reference, every
    backend applies the temperature (same calibrated probabilities), evaluate reports both, and
    ``medseg-predict --uncertainty`` writes the maps and the QC records."""
    art = load_artifact(run_dir / "export" / "artifact")
    cal, qc = art.metadata["calibration"], art.metadata["qc"]
    assert len(cal["temperature"]) == 4 and all(t > 0 for t in cal["temperature"])
    assert set(qc["fingerprint"]["intensity"]) == set(art.spec.channels) and "entropy" in qc["thresholds"]
    image, affine = load_input(sorted((tiny_dataset / "imagesTs").glob("*.nii.gz"))[0], 4)
    cpu = InferenceConfig(device=Device.cpu)
    preds = {}
    for backend in ("torch", "onnxruntime"):
        predictor = build_predictor(cpu, artifact=art, backend=backend)
        assert predictor.temperature == cal["temperature"]
        predictor.uncertainty = True
        preds[backend] = predictor(image, affine, name="case")
    np.testing.assert_array_equal(preds["torch"].label, preds["onnxruntime"].label)
    np.testing.assert_allclose(preds["torch"].uncertainty.map, preds["onnxruntime"].uncertainty.map, atol=1e-3)
    raw = build_predictor(InferenceConfig(device=Device.cpu, calibrate=False), artifact=art)
    assert raw.temperature is None
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    review = metrics["review"]
    assert review["calibration"]["temperature"] == pytest.approx(cal["temperature"])
    assert set(review["qc"]["cases"]) == {c["case"] for c in metrics["cases"]}
    assert "Calibration" in (run_dir / "evaluate" / "report.md").read_text()
    assert (run_dir / "evaluate" / "figures" / "reliability.png").is_file() or \
        not any(c["before"]["n_voxels"] for c in review["calibration"]["test"].values())
    from medseg.inference.cli import main

    assert main([str(art.path), str(tiny_dataset / "imagesTs"), str(tmp_path), "--uncertainty"]) == 0
    summary = json.loads((tmp_path / "predictions.json").read_text())
    for case in summary["cases"]:
        assert {"score", "review", "reasons"} <= set(case["qc"]) and case["qc"]["uncertainty"]["regions"]
        import nibabel as nib

        umap = nib.load(case["uncertainty_map"])
        assert umap.shape == nib.load(case["output"]).shape and np.asarray(umap.dataobj).max() <= 2.0 + 1e-5
    assert summary["qc"]["n_checked"] == len(summary["cases"])


def test_thresholds_from_few_validation_cases_take_the_normal_tolerance_bound():
    fp = {"spacing_mm": {"min": [1, 1, 1], "median": [1, 1, 1], "max": [1, 1, 1]},
          "shape": {"min": [10, 10, 10], "median": [10, 10, 10], "max": [10, 10, 10]}}
    validation = [{"entropy": v} for v in (0.2, 0.3, 0.4, 0.5)]
    assert fit_thresholds(validation, fp, 1.0)["entropy"] == 0.5  # the largest alone
    mean, sd = 0.35, float(np.std([0.2, 0.3, 0.4, 0.5], ddof=1))
    bound = fit_thresholds(validation, fp, 1.0, false_flag_rate=0.01)["entropy"]
    assert bound == pytest.approx(mean + 2.3263478740408408 * sd)
    assert fit_thresholds([{"entropy": 0.9}], fp, 1.0, false_flag_rate=0.01)["entropy"] == 0.9
