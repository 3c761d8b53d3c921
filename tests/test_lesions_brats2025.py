"""BraTS 2025 lesion-wise scores: medseg agrees with the ``brats-evaluation`` package (panoptica)."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medseg.data.labels import BRATS_GROUP_NAMES, CONVENTIONS, label_spec, region_masks, remap_labels
from medseg.data.synthetic import SynthConfig, generate_case
from medseg.metrics.case import case_metrics
from medseg.metrics.lesions_brats2025 import lesion_metrics_brats2025
from medseg.metrics.overlap import EmptyConvention

#: internal code -> BraTS 2024 GLI source code (1 NETC, 2 SNFH, 3 ET, 4 RC)
TO_GLI_2024 = {v: k for k, v in CONVENTIONS["brats2024_gli"].items()}


def _with_cavity(label: np.ndarray, seed: int) -> np.ndarray:
    """Add a resection cavity (internal code 4): a small ball next to the tumour, or anywhere."""
    rng = np.random.default_rng(seed)
    out = label.copy()
    centre = np.array(np.nonzero(label)).mean(axis=1) if label.any() else np.array(label.shape) / 2
    centre = centre + rng.integers(-4, 5, size=3)
    grid = np.indices(label.shape).transpose(1, 2, 3, 0)
    ball = np.linalg.norm(grid - centre, axis=-1) <= 2.5
    out[ball & (label == 0)] = 4
    return out


def _prediction(label: np.ndarray, seed: int) -> np.ndarray:
    """A plausible, imperfect prediction: shifted, one component of each label partly dropped,
    a false-positive blob and a split lesion."""
    rng = np.random.default_rng(seed)
    pred = np.roll(label, shift=tuple(rng.integers(-1, 2, size=3)), axis=(0, 1, 2))
    pred[ndimage.binary_erosion(pred == 3, iterations=1) & (rng.random(pred.shape) < 0.3)] = 2
    corner = tuple(slice(int(c), int(c) + 3) for c in rng.integers(1, np.array(label.shape) - 4))
    pred[corner] = rng.choice([1, 3, 4])
    if (pred == 1).any():  # cut the edema by a plane: may split it into two lesions
        x = int(np.median(np.nonzero(pred == 1)[0]))
        pred[x, :, :][pred[x, :, :] == 1] = 0
    return pred


def _cases(tmp_path, vary_grid: bool):
    cfg = SynthConfig(spacing=6.0, seed=3, vary_grid=vary_grid)
    out = []
    for i in range(4):
        case = generate_case(cfg.seed * 100003 + i, tumour=i != 3, cfg=cfg)
        ref = _with_cavity(case.label, i) if i % 2 == 0 else case.label
        pred = _prediction(ref, 100 + i)
        paths = []
        for kind, lab in (("ref", ref), ("pred", pred)):
            coded = np.vectorize(TO_GLI_2024.get)(lab).astype(np.uint8)
            path = tmp_path / kind / f"BraTS-GLI-{i:05d}-000.nii.gz"  # brats-evaluation's case ids
            path.parent.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(coded, case.affine), str(path))
            paths.append(path)
        out.append(tuple(paths))
    return out


def _assert_agree(ours: dict, group: dict, where: str) -> None:
    assert (ours["lesion_tp"], ours["lesion_fp"], ours["lesion_fn"]) == (group["tp"], group["fp"], group["fn"]), where
    for key, their_key in (("lesion_dice", "sq_dsc"), ("lesion_hd95", "sq_hd95"), ("lesion_nsd", "sq_nsd")):
        a, b = ours[key], float(group[their_key])
        if math.isnan(b) or math.isinf(b):
            assert (math.isnan(a) and math.isnan(b)) or a == b, (where, key, a, b)
        else:
            assert a == pytest.approx(b, rel=1e-6, abs=1e-6), (where, key, a, b)


@pytest.mark.parametrize("files", [True, False], ids=["files-isotropic", "arrays-anisotropic"])
def test_agrees_with_brats_evaluation_per_case_and_region(tmp_path, files):
    """Built-in cases re-coded to BraTS 2024 GLI (with resection cavities), scored by
    ``brats_evaluation.evaluate_single_exam`` (files, as the challenge does) on isotropic grids and
    by its panoptica evaluator given arrays and spacing on rotated anisotropic grids."""
    be = pytest.importorskip("brats_evaluation")
    from panoptica import Panoptica_Evaluator

    evaluator = Panoptica_Evaluator.load_from_config(str(be.config_path("gli")))
    spec = label_spec("brats2024_gli")
    matched = 0
    for ref_path, pred_path in _cases(tmp_path, vary_grid=not files):
        ref_img, pred_img = nib.load(ref_path), nib.load(pred_path)
        spacing = tuple(float(s) for s in np.linalg.norm(ref_img.affine[:3, :3], axis=0))
        if files:
            theirs = be.evaluate_single_exam(str(pred_path), str(ref_path), ref_path.name, evaluator)
            assert "error" not in theirs, theirs
        else:
            results = evaluator.evaluate(np.asarray(pred_img.dataobj), np.asarray(ref_img.dataobj),
                                         voxelspacing=spacing)
            theirs = {k: r.to_dict(True) for k, r in results.items()}
        ref = remap_labels(np.asarray(ref_img.dataobj), "brats2024_gli")
        pred = remap_labels(np.asarray(pred_img.dataobj), "brats2024_gli")
        ref_masks, pred_masks = region_masks(ref, spec.regions), region_masks(pred, spec.regions)
        for region in spec.regions:
            ours = lesion_metrics_brats2025(pred_masks[region], ref_masks[region], spacing)
            _assert_agree(ours, theirs[BRATS_GROUP_NAMES[region]], f"{ref_path.name} {region}")
            matched += ours["lesion_tp"] > 0
    assert matched >= 8  # matched lesions were really scored, not only edge cases


def test_hand_built_matching_is_one_to_one_without_dilation():
    ref = np.zeros((30, 30, 10), bool)
    ref[2:8, 2:8, 2:8] = True
    ref[12:18, 2:8, 2:8] = True  # 4 voxels away: two lesions (BraTS 2023 would merge them)
    pred = np.zeros_like(ref)
    pred[2:18, 2:8, 2:8] = True  # one prediction covering both: matches one of them only
    pred[25:27, 25:27, 5:7] = True  # a false positive
    m = lesion_metrics_brats2025(pred, ref, (1.0, 1.0, 1.0))
    assert (m["lesion_tp"], m["lesion_fp"], m["lesion_fn"]) == (1, 1, 1)
    assert m["lesion_dice"] == pytest.approx(2 * 216 / (216 + 16 * 36))  # mean over the one match
    assert m["lesion_f1"] == pytest.approx(1 / (1 + 1))
    empty = np.zeros_like(ref)
    assert math.isnan(lesion_metrics_brats2025(empty, empty, (1, 1, 1))["lesion_dice"])
    missed = lesion_metrics_brats2025(empty, ref, (1, 1, 1))
    assert missed["lesion_dice"] == 0.0 and math.isinf(missed["lesion_hd95"]) and missed["lesion_fn"] == 2


def test_case_metrics_states_the_convention_through_its_values():
    ref = np.zeros((20, 20, 8), np.uint8)
    ref[2:6, 2:6, 2:6] = 3
    pred = np.zeros_like(ref)
    spec = label_spec("brats2024_gli")
    m23 = case_metrics(pred, ref, (1, 1, 1), spec, lesion_convention="brats2023")
    m25 = case_metrics(pred, ref, (1, 1, 1), spec, empty=EmptyConvention(one_empty_hd=373.0),
                       lesion_convention="brats2025")
    assert m23["enhancing_tumour"]["lesion_hd95"] == 374.0
    assert m25["enhancing_tumour"]["lesion_hd95"] == 373.0  # infinite (nothing matched) -> one-empty HD
    assert m25["resection_cavity"]["lesion_dice"] is None  # no lesion in either: undefined
    assert "lesion_nsd" in m25["whole_tumour"] and "lesion_nsd" not in m23["whole_tumour"]
