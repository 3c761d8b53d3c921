"""Scoring external prediction folders, bad prediction folders, empty-mask conventions, run
comparison, and the HTML report rendered by headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import run_medseg
from medseg.data.labels import label_spec
from medseg.metrics.case import case_metrics
from medseg.metrics.overlap import EmptyConvention
from medseg.stages.compare import wilcoxon_p

REGIONS = ("whole_tumour", "tumour_core", "enhancing_tumour")


def _labels(tiny_dataset: Path) -> dict[str, Path]:
    return {p.name[:-7]: p for d in ("labelsTr", "labelsTs") for p in sorted((tiny_dataset / d).glob("*.nii.gz"))}


def _tumour_free(refs: Path) -> list[str]:
    free = [p.name[:-7] for p in sorted(refs.glob("*.nii.gz")) if not np.asarray(nib.load(p).dataobj).any()]
    assert free, "the tiny dataset has no tumour-free case"
    return free


def _write_like(src: Path, data: np.ndarray, dst: Path) -> None:
    img = nib.load(src)
    nib.save(nib.Nifti1Image(data, img.affine), dst)


@pytest.fixture(scope="module")
def folders(tiny_dataset, tmp_path_factory) -> dict[str, Path]:
    """refs/ (all six labels), images/ (+ dataset.json beside it), perfect/ (= refs),
    fp/ (= refs plus a blob in the tumour-free case), worse/ (the tumours eroded)."""
    from scipy import ndimage

    root = tmp_path_factory.mktemp("folders")
    refs, images, perfect, fp, worse = (root / n for n in ("refs", "images", "perfect", "fp", "worse"))
    for d in (refs, images, perfect, fp, worse):
        d.mkdir()
    shutil.copy(tiny_dataset / "dataset.json", root / "dataset.json")
    for name, path in _labels(tiny_dataset).items():
        shutil.copy(path, refs / path.name)
        shutil.copy(path, perfect / path.name)
        split = "imagesTr" if (tiny_dataset / "imagesTr" / path.name).exists() else "imagesTs"
        shutil.copy(tiny_dataset / split / path.name, images / path.name)
        lab = np.asarray(nib.load(path).dataobj).astype(np.uint8)
        eroded = np.where(ndimage.binary_erosion(lab > 0, iterations=1), lab, 0).astype(np.uint8)
        _write_like(path, eroded, worse / path.name)
        blob = lab.copy()
        if not lab.any():
            c = np.array(lab.shape) // 2
            blob[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = 1
        _write_like(path, blob, fp / path.name)
    return {"root": root, "refs": refs, "images": images, "perfect": perfect, "fp": fp, "worse": worse}


def _evaluate(folders, preds: str, out: str, *extra: str) -> subprocess.CompletedProcess:
    return run_medseg(["evaluate", f"evaluate.predictions={folders[preds]}", f"evaluate.references={folders['refs']}",
                       f"evaluate.images={folders['images']}", "evaluate.n_figures=2", f"hydra.run.dir={out}",
                       *extra], folders["root"])


@pytest.fixture(scope="module")
def fp_report(folders) -> Path:
    proc = _evaluate(folders, "fp", "eval_fp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folders["root"] / "eval_fp"


def test_external_folder_is_scored_with_the_full_report(fp_report, folders):
    metrics = json.loads((fp_report / "metrics.json").read_text())
    assert metrics["n_cases"] == 6 and metrics["failed"] == [] and metrics["model_sha256"] is None
    assert len(metrics["data_fingerprint"]) == 64 and metrics["config"]["evaluate"]["labels"] == "msd"
    assert metrics["provenance"]["versions"]["torch"] and metrics["provenance"]["commit"]
    for case in metrics["cases"]:  # every prediction is the reference except the blob
        if case["case"] not in _tumour_free(folders["refs"]):
            assert all(case[r]["dice"] == 1.0 and case[r]["hd95"] == 0.0 for r in REGIONS)
    html = (fp_report / "report.html").read_text()
    for part in ("Dice mean [95% CI]", "Bland–Altman", "Tumour detection", "Worst 2 cases", "Best 2 cases",
                 "Provenance", "Resolved configuration", "brats: both masks empty", "sortable"):
        assert part in html, part
    assert "on FLAIR" in html and "on t1gd" in html  # montages on the relevant contrasts
    assert html.count("data:image/png;base64,") >= 8  # dice, hd95, bland-altman, roc, 4 montages
    for attr in ("src", "href"):  # offline: nothing is loaded from elsewhere (NiiVue's code names URLs in comments)
        assert f'{attr}="http' not in html and f"{attr}='http" not in html


def test_false_positive_blob_in_a_tumour_free_case_is_a_false_detection(fp_report, folders):
    free = _tumour_free(folders["refs"])
    det = json.loads((fp_report / "detections.json").read_text())
    for name in free:
        case = next(c for c in det["cases"] if c["case"] == name)
        assert case["tumour_present"] and not case["reference_tumour_present"] and case["n_lesions"] == 1
        assert name in (fp_report / "report.md").read_text().split("False detections")[1].split("\n")[0]
    assert det["case_level"]["fp"] == len(free) and det["case_level"]["specificity"] == 0.0
    assert det["case_level"]["sensitivity"] == 1.0 and det["case_level"]["tn"] == 0


def test_missing_prediction_is_an_error_naming_the_case(folders, tmp_path):
    preds = tmp_path / "preds"
    shutil.copytree(folders["perfect"], preds)
    gone = sorted(preds.glob("*.nii.gz"))[0]
    gone.unlink()
    folders = {**folders, "partial": preds}
    proc = _evaluate(folders, "partial", str(tmp_path / "strict"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert gone.name[:-7] in proc.stderr and "skip_bad" in proc.stderr
    assert not (tmp_path / "strict" / "metrics.json").exists()
    proc = _evaluate(folders, "partial", str(tmp_path / "lenient"), "evaluate.skip_bad=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "lenient" / "metrics.json").read_text())
    assert [f["case"] for f in metrics["failed"]] == [gone.name[:-7]]
    assert metrics["failed"][0]["scored_as"] == "empty prediction" and metrics["n_cases"] == 6
    html = (tmp_path / "lenient" / "report.html").read_text()
    assert "Failed cases" in html and gone.name[:-7] in html


@pytest.mark.parametrize("defect, message", [("shape", "shape"), ("float", "non-integer"),
                                             ("label", "not in the msd convention")])
def test_bad_prediction_file_is_refused_naming_the_case(folders, tmp_path, defect, message):
    preds = tmp_path / "preds"
    shutil.copytree(folders["perfect"], preds)
    victim = sorted(preds.glob("*.nii.gz"))[1]
    lab = np.asarray(nib.load(victim).dataobj).astype(np.float32)
    data = {"shape": lab[:-1], "float": lab + 0.5, "label": np.where(lab > 0, 7, 0).astype(np.float32)}[defect]
    _write_like(victim, data, victim)
    proc = _evaluate({**folders, "bad": preds}, "bad", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert victim.name in proc.stderr and message in proc.stderr


def test_empty_conventions_are_configurable():
    labels = label_spec("msd")
    empty = np.zeros((8, 8, 8), np.uint8)
    blob = empty.copy()
    blob[2:4, 2:4, 2:4] = 1
    brats = case_metrics(empty, empty, (1, 1, 1), labels, empty=EmptyConvention.named("brats"))
    assert brats["whole_tumour"]["dice"] == 1.0 and brats["whole_tumour"]["hd95"] == 0.0
    ignore = case_metrics(empty, empty, (1, 1, 1), labels, empty=EmptyConvention.named("ignore"))
    assert ignore["whole_tumour"]["dice"] is None and ignore["whole_tumour"]["hd95"] is None
    one = case_metrics(blob, empty, (1, 1, 1), labels, empty=EmptyConvention.named("ignore"))
    assert one["whole_tumour"]["dice"] == 0.0 and one["whole_tumour"]["hd95"] is None
    one = case_metrics(blob, empty, (1, 1, 1), labels, empty=EmptyConvention.named("brats", 300.0))
    assert one["whole_tumour"]["hd95"] == 300.0
    assert "undefined" in EmptyConvention.named("ignore").describe()


def test_ignore_convention_reaches_the_report(folders, tmp_path):
    proc = _evaluate(folders, "perfect", str(tmp_path / "out"), "evaluate.empty_convention=ignore",
                     "evaluate.n_figures=0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    free = _tumour_free(folders["refs"])
    assert all(c["whole_tumour"]["dice"] is None for c in metrics["cases"] if c["case"] in free)
    assert metrics["summary"]["whole_tumour"]["dice"]["n"] == 6 - len(free)  # tumour-free cases left out
    assert "ignore: both masks empty -&gt; Dice undefined" in (tmp_path / "out" / "report.html").read_text()
    proc = _evaluate(folders, "perfect", str(tmp_path / "bad"), "evaluate.empty_convention=nnunet")
    assert proc.returncode == 2 and "brats, ignore" in proc.stderr


def test_compare_runs(folders, fp_report, tmp_path):
    proc = _evaluate(folders, "worse", str(tmp_path / "worse"), "evaluate.n_figures=0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_medseg(["compare", str(fp_report), str(tmp_path / "worse"), "--out", str(tmp_path / "cmp")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    wt = cmp["structures"]["whole_tumour"]["dice"]
    free = _tumour_free(folders["refs"])  # A has a false-positive blob there, B (eroded tumours) does not
    assert cmp["n_paired"] == 6 and sorted(wt["better"]) == free
    assert len(wt["worse"]) == 6 - len(free) and not set(wt["worse"]) & set(free)
    a, b = (np.array([c["whole_tumour"]["dice"][k] for c in cmp["cases"]]) for k in ("a", "b"))
    assert wt["mean_diff"] == pytest.approx((b - a).mean()) and 0 < wt["wilcoxon_p"] <= 1
    assert cmp["structures"]["whole_tumour"]["hd95"]["worse"]  # higher HD95 is worse
    assert (tmp_path / "cmp" / "compare.html").read_text().count("data:image/png") == 1
    assert "Wilcoxon" in (tmp_path / "cmp" / "compare.md").read_text()
    proc = run_medseg(["compare", str(fp_report), str(tmp_path / "nowhere")], tmp_path)
    assert proc.returncode == 2 and "no metrics.json" in proc.stderr and "Traceback" not in proc.stderr


def test_wilcoxon_against_hand_computed_exact_value():
    # 5 positive differences with distinct ranks: exact two-sided p = 2 / 2**5
    assert wilcoxon_p(np.array([0.1, 0.2, 0.3, 0.4, 0.5])) == pytest.approx(2 / 32)
    assert wilcoxon_p(np.zeros(4)) is None


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)

LAYOUT_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images).map(function (i) {
    var r = i.getBoundingClientRect();
    return {w: r.width, h: r.height, nw: i.naturalWidth, left: r.left, right: r.right}; });
  var tables = Array.from(document.querySelectorAll('table')).map(function (t) {
    var r = t.getBoundingClientRect(); return {rows: t.rows.length, w: r.width, right: r.right}; });
  var pre = document.createElement('pre'); pre.id = 'layout';
  pre.textContent = JSON.stringify({imgs: imgs, tables: tables, width: document.documentElement.clientWidth});
  document.body.appendChild(pre);
});
</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (make chromium installs it)")
def test_report_renders_in_headless_chromium(fp_report, tmp_path):
    page = tmp_path / "probe.html"
    text = (fp_report / "report.html").read_text()
    cut = text.rindex("</body>")  # the page's own (NiiVue's code holds the string too)
    page.write_text(text[:cut] + LAYOUT_PROBE.removesuffix("</body>") + text[cut:])
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,2400", "--virtual-time-budget=5000"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    raw = dom.stdout.split('<pre id="layout">')[1].split("</pre>")[0]
    layout = json.loads(raw.replace("&quot;", '"').replace("&amp;", "&"))
    assert len(layout["imgs"]) >= 8
    for img in layout["imgs"]:  # every figure decoded, visible and inside the page width
        assert img["nw"] > 100 and img["w"] > 150 and img["h"] > 100, img
        assert img["left"] >= 0 and img["right"] <= layout["width"] + 1, img
    assert len(layout["tables"]) >= 5 and max(t["rows"] for t in layout["tables"]) >= 7
    summary = layout["tables"][0]  # the summary table fits the page without scrolling
    assert summary["rows"] >= 7 and summary["right"] <= layout["width"] + 1, summary
    png = tmp_path / "report.png"
    shot = subprocess.run([CHROMIUM, *flags, f"--screenshot={png}", (fp_report / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and png.is_file(), shot.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280) and pixels.std() > 20  # not a blank page
