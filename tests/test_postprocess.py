"""The small-enhancing rule: a case's predicted enhancing tumour under a threshold fitted on the
validation cases is relabelled as tumour core, by medseg's predictor and by the MONAI bundle alike,
and the threshold travels from ``export`` to every runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg.config import Device, InferenceConfig
from medseg.data.labels import LABEL_SETS, LabelSpec
from medseg.data.preprocess import PreprocessSpec
from medseg.inference.postprocess import (EnhancingRule, EnhancingSample, enhancing_sample, fit_enhancing_threshold,
                                          pooled_enhancing_fit)
from medseg.inference.predictor import CasePredictor
from medseg.inference.targets import Target


def label_set(name: str) -> LabelSpec:
    labels, regions = LABEL_SETS[name]
    return LabelSpec(labels=labels, regions=regions)


@pytest.mark.parametrize("name, rule", [
    ("brats", EnhancingRule((3,), 2)),  # MSD Task01 / BraTS 2021 / 2023 after mapping: ET 3 -> NETC 2
    ("post_treatment", EnhancingRule((3,), 2)),  # the resection cavity (4) is in no core: never the replacement
    ("metastasis", EnhancingRule((3,), 2)),
    ("paediatric", EnhancingRule((3,), 2)),  # core {2, 3, 4}: the non-enhancing core, not the cyst
    ("lesion", None),
    ("gtv", None),
])
def test_the_rule_relabels_enhancing_tumour_as_non_enhancing_core_in_every_label_set(name, rule):
    assert EnhancingRule.for_labels(label_set(name)) == rule


def test_the_rule_keeps_tumour_core_and_whole_tumour_and_counts_millilitres():
    rule = EnhancingRule.for_labels(LabelSpec())
    label = np.zeros((10, 10, 10), np.uint8)
    label[2:8, 2:8, 2:8] = 1
    label[4:6, 4:6, 4:6] = 2
    label[4:6, 4:6, 6] = 3  # 4 voxels of 2 x 2 x 2 mm: 0.032 ml
    out = rule.apply(label, voxel_ml=0.008, min_ml=0.04)
    assert not (out == 3).any() and (out[4:6, 4:6, 6] == 2).all()
    np.testing.assert_array_equal(out > 0, label > 0)  # whole tumour
    np.testing.assert_array_equal(np.isin(out, (2, 3)), np.isin(label, (2, 3)))  # tumour core
    assert rule.apply(label, voxel_ml=0.008, min_ml=0.032) is label  # not under the threshold: kept
    assert rule.apply(label, voxel_ml=0.008, min_ml=0.0) is label  # off
    assert rule.volume_ml(label, 0.008) == pytest.approx(0.032)


def test_samples_score_enhancing_dice_with_the_brats_empty_convention():
    rule = EnhancingRule((3,), 2)
    ref = np.zeros((6, 6, 6), np.uint8)
    pred = ref.copy()
    pred[0, 0, :3] = 3
    absent = enhancing_sample("absent", pred, ref, rule, voxel_ml=0.5)
    assert (absent.pred_ml, absent.ref_ml, absent.dice) == (1.5, 0.0, 0.0)
    assert absent.dice_with(2.0) == 1.0 and absent.dice_with(1.5) == 0.0
    ref[0, 0, 1:4] = 3  # overlap 2 of 3 + 3 voxels
    present = enhancing_sample("present", pred, ref, rule, voxel_ml=0.5)
    assert present.dice == pytest.approx(2 * 2 / 6)
    assert present.dice_with(2.0) == 0.0  # a true enhancing tumour relabelled: missed
    assert enhancing_sample("empty", ref * 0, ref * 0, rule, 0.5).dice == 1.0


def test_the_fit_takes_the_smallest_best_threshold_and_only_for_a_gain():
    absent = EnhancingSample("absent", 0.15, 0.0, 0.0)
    small_true = EnhancingSample("small_true", 0.4, 0.5, 0.8)
    large = EnhancingSample("large", 6.0, 7.0, 0.9)
    fit = fit_enhancing_threshold([absent, small_true, large])
    # 0.2 ml relabels the false one only: mean (1 + 0.8 + 0.9) / 3; 0.5 would lose the true 0.4 ml one
    assert fit["min_enhancing_ml"] == 0.2 and fit["cases_relabelled"] == {"absent": 0.15}
    assert fit["mean_dice_before"] == pytest.approx(1.7 / 3) and fit["mean_dice_after"] == pytest.approx(2.7 / 3)
    # a gain of one absent case against a loss of one true case of the same size: no gain, off
    assert fit_enhancing_threshold([EnhancingSample("a", 0.3, 0.0, 0.0),
                                    EnhancingSample("b", 0.3, 0.4, 1.0)])["min_enhancing_ml"] == 0.0
    # nothing predicted where the reference has nothing: nothing to fix
    assert fit_enhancing_threshold([EnhancingSample("empty", 0.0, 0.0, 1.0), large])["min_enhancing_ml"] == 0.0
    assert fit_enhancing_threshold([])["min_enhancing_ml"] == 0.0


def test_the_predictor_applies_the_rule_after_the_component_removal():
    spec = PreprocessSpec(channels=("t1",), target_spacing=(2.0, 2.0, 2.0))
    predictor = CasePredictor(lambda x: x, spec, (16, 16, 16), Target("labels", LabelSpec()),
                              InferenceConfig(device=Device.cpu, min_component_ml=0.05, min_enhancing_ml=0.1))
    label = np.zeros((20, 20, 20), np.uint8)
    label[2:10, 2:10, 2:10] = 1
    label[5:7, 5:7, 5:7] = 3  # 8 voxels of 8 mm^3: 0.064 ml of enhancing tumour, inside the tumour
    label[15, 15, 15:20] = 3  # a separate speck of 0.04 ml (0.104 ml in all): removed first, as a small component
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    out, relabelled = predictor.postprocess(label, affine)
    assert relabelled == pytest.approx(0.064)  # counted after the speck went
    assert not (out == 3).any() and (out[5:7, 5:7, 5:7] == 2).all() and not out[15, 15, 15:20].any()
    predictor.min_enhancing_ml = 0.05
    out, relabelled = predictor.postprocess(label, affine)
    assert relabelled is None and (out[5:7, 5:7, 5:7] == 3).all()
    lesions = CasePredictor(lambda x: x, spec, (16, 16, 16), Target("labels", label_set("lesion")),
                            InferenceConfig(device=Device.cpu, min_component_ml=0, min_enhancing_ml=5.0))
    assert lesions.enhancing_rule is None and lesions.postprocess(label, affine)[0] is label
    assert lesions.min_enhancing_ml == 0.0  # what evaluate records is what was applied: nothing


def test_the_bundle_component_equals_medseg_s_on_a_permuted_grid():
    from monai.data import MetaTensor

    from medseg.export.bundle_components import RelabelSmallEnhancingd

    affine = np.array([[0.0, 0.0, 1.2, 0.0], [-0.9, 0.0, 0.0, 0.0], [0.0, 2.5, 0.0, 0.0], [0, 0, 0, 1]])
    rule = EnhancingRule((3,), 2)
    rng = np.random.default_rng(0)
    for count, expect_relabelled in ((20, True), (200, False)):  # 20 x 2.7 mm^3 = 0.054 ml; 200: 0.54 ml
        label = rng.integers(0, 3, (20, 18, 16)).astype(np.uint8)
        label.ravel()[rng.choice(label.size, count, replace=False)] = 3
        pred = MetaTensor(torch.from_numpy(label)[None], affine=torch.from_numpy(affine),
                          meta={"original_affine": affine})
        mine = RelabelSmallEnhancingd("pred", min_ml=0.1, codes=[3], replacement=2)({"pred": pred})["pred"]
        ref = rule.apply(label, float(np.prod(np.linalg.norm(affine[:3, :3], axis=0))) / 1000, 0.1)
        assert (ref is not label) == expect_relabelled
        np.testing.assert_array_equal(np.asarray(mine[0]), ref)


def test_export_and_evaluate_fit_the_same_threshold_on_the_validation_cases(run_dir):
    """The tiny run: both stages fit on the validation split and record the fit; the artifact
    carries what every runner applies."""
    from medseg.export.artifact import load_artifact
    from medseg.inference.build import build_predictor

    post = json.loads((run_dir / "export" / "artifact" / "metadata.json").read_text())["postprocessing"]
    datalist = json.loads((run_dir / "prepare" / "datalist.json").read_text())
    n_val = len([e for e in datalist["validation"] if e.get("label")])
    assert n_val > 0
    assert post["enhancing_codes"] == [3] and post["enhancing_replacement"] == 2
    assert post["enhancing_fit"]["n_cases"] == n_val
    assert post["min_enhancing_ml"] == post["enhancing_fit"]["min_enhancing_ml"]
    assert post["min_enhancing_ml"] in [0.0, *post["enhancing_fit"]["candidates_ml"]]
    samples = post["enhancing_fit"]["samples"]  # the evidence an ensemble refits on
    assert len(samples) == n_val and {r[0] for r in samples} == {e["name"] for e in datalist["validation"]
                                                                  if e.get("label")}
    assert pooled_enhancing_fit([post["enhancing_fit"]])["min_enhancing_ml"] == post["min_enhancing_ml"]
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert metrics["postprocessing"]["min_enhancing_ml"] == post["min_enhancing_ml"]  # evaluate scored what ships
    assert metrics["postprocessing"]["enhancing_fit"]["n_cases"] == n_val
    report = (run_dir / "evaluate" / "report.md").read_text()
    assert "Post-processing, as predict applies it: tumour components under" in report
    assert ("relabelled as tumour core" if post["min_enhancing_ml"] else "small-enhancing rule off") in report
    art = load_artifact(run_dir / "export" / "artifact")
    assert build_predictor(InferenceConfig(device=Device.cpu), artifact=art).min_enhancing_ml == post["min_enhancing_ml"]
    assert build_predictor(InferenceConfig(device=Device.cpu, min_enhancing_ml=0.7), artifact=art
                           ).min_enhancing_ml == 0.7


def test_the_model_card_states_the_rule_and_its_evidence_only_when_on(run_dir):
    """The card's limitations say what a reader must know: the threshold, the validation evidence
    it was fitted on, and that a true enhancing tumour that small is missed; nothing when off."""
    from medseg.export.model_card import model_card

    meta = json.loads((run_dir / "export" / "artifact" / "metadata.json").read_text())
    fit = {"n_cases": 12, "mean_dice_before": 0.8125, "mean_dice_after": 0.875}
    for post, expect in (({"min_component_ml": 0.5, "min_enhancing_ml": 0.05, "enhancing_fit": fit},
                          "- A case's predicted enhancing tumour under 0.05 ml is relabelled as tumour core (a rule "
                          "against false enhancing tumour in non-enhancing and tumour-free cases, its threshold "
                          "fitted on 12 validation cases: enhancing-tumour Dice 0.812 -> 0.875); a true enhancing "
                          "tumour that small is then missed."),
                         ({"min_component_ml": 0.5, "min_enhancing_ml": 0.7, "enhancing_fit": None},
                          "- A case's predicted enhancing tumour under 0.7 ml is relabelled as tumour core (a rule "
                          "against false enhancing tumour in non-enhancing and tumour-free cases); a true enhancing "
                          "tumour that small is then missed."),
                         ({"min_component_ml": 0.5, "min_enhancing_ml": 0.0, "enhancing_fit": fit}, None)):
        card = model_card({**meta, "postprocessing": post}, None)
        limitations = card.split("## Limitations", 1)[1]
        assert "components under 0.5 ml are removed" in limitations
        if expect is None:
            assert "relabelled" not in card
        else:
            assert expect in limitations.splitlines()


def test_an_ensemble_refits_the_threshold_on_its_members_pooled_validation_cases(run_dir, caplog):
    """Fold A saw a false 0.3 ml speck (alone it would relabel under 0.5 ml), fold B a true 0.4 ml
    enhancing tumour (alone: off). Pooled, 0.5 ml gains 1 on A's case and loses 0.8 on B's: 0.5.
    With B's true tumour at Dice 1 the loss outweighs the gain and the ensemble turns the rule off.
    A member without the evidence falls back to the first artifact's threshold, with a warning."""
    import copy
    import logging

    from medseg.export.artifact import load_artifact
    from medseg.inference.build import build_predictor, enhancing_threshold

    art = load_artifact(run_dir / "export" / "artifact")

    def member(ml, samples):
        fit = fit_enhancing_threshold([EnhancingSample(*r) for r in samples])
        assert fit["min_enhancing_ml"] == ml
        other = copy.copy(art)
        other.metadata = {**art.metadata, "postprocessing": {**art.metadata["postprocessing"],
                                                              "min_enhancing_ml": ml, "enhancing_fit": fit}}
        return other

    a = member(0.5, [("A1", 0.3, 0.0, 0.0), ("A2", 5.0, 6.0, 0.9)])
    b = member(0.0, [("B1", 0.4, 0.5, 0.8), ("B2", 7.0, 7.0, 0.9)])
    inference = InferenceConfig(device=Device.cpu)
    predictor = build_predictor(inference, artifact=a, ensemble=[b])
    assert predictor.min_enhancing_ml == 0.5 and len(predictor.nets) == 2
    assert predictor.enhancing_source == "refitted on the pooled validation cases of the 2 ensemble members (4 cases)"
    assert enhancing_threshold(inference, b, [a])[0] == 0.5  # the order of the members does not matter
    b_perfect = member(0.0, [("B1", 0.4, 0.5, 1.0), ("B2", 7.0, 7.0, 0.9)])
    assert enhancing_threshold(inference, a, [b_perfect])[0] == 0.0  # +1 on A1, -1 on B1: no gain, off
    assert enhancing_threshold(InferenceConfig(device=Device.cpu, min_enhancing_ml=0.2), a, [b]) == \
        (0.2, "configured (inference.min_enhancing_ml, --min-enhancing-ml)")

    legacy = copy.copy(b)  # exported before the samples were recorded: a fit without them
    fit = {k: v for k, v in b.metadata["postprocessing"]["enhancing_fit"].items() if k != "samples"}
    legacy.metadata = {**b.metadata, "postprocessing": {**b.metadata["postprocessing"], "enhancing_fit": fit}}
    configured = copy.copy(b)  # exported with a configured threshold: no fit at all
    configured.metadata = {**b.metadata, "postprocessing": {**b.metadata["postprocessing"], "enhancing_fit": None}}
    for other in (legacy, configured):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medseg.inference.build"):
            assert enhancing_threshold(inference, a, [other]) == (0.5, "the first ensemble member's (members differ)")
        assert "thresholds differ (0, 0.5 ml)" in caplog.text
        assert enhancing_threshold(inference, b, [other]) == (0.0, "the ensemble members' common threshold")


def test_predict_states_the_threshold_it_applied_and_its_source(run_dir):
    """predictions.json says which threshold ran and why (an artifact's own fit here; an ensemble's
    refit in tests/test_e2e.py)."""
    post = json.loads((run_dir / "export" / "artifact" / "metadata.json").read_text())["postprocessing"]
    summary = json.loads((run_dir / "predict" / "predictions.json").read_text())
    assert summary["postprocessing"] == {"min_component_ml": post["min_component_ml"],
                                         "min_enhancing_ml": post["min_enhancing_ml"],
                                         "min_enhancing_source": "the artifact's (fitted at export)"}
