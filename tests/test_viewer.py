"""The NiiVue viewer of report.html and review.html: region maps, the crop/sampling and its size
bounds (checked by decoding the embedded NIfTI with nibabel), the QC ordering, and both pages driven
in headless Chromium (WebGL on SwiftShader): no console errors, the volume and the region colours
on the canvas, a case switch changes the picture. Canvas snapshots and screenshots are kept under
the test's tmp dir (the path is printed)."""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO, run_medseg
from medseg.errors import ConfigError
from medseg.report.viewer import review_order
from medseg.utils.niivue import (MB, CaseVolumes, ViewerBounds, ViewerCase, encode_case, encode_cases, niivue_script,
                                 region_map, viewer_bounds)

BRATS = {"whole_tumour": (1, 2, 3), "tumour_core": (1, 3), "enhancing_tumour": (3,)}
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_browser = pytest.mark.skipif(CHROMIUM is None or niivue_script() is None,
                                   reason="needs headless Chromium (make chromium) and NiiVue (make viewer)")


def _decode(b64: str) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(b64)))


def _case(seed: int = 0, shape: tuple[int, int, int] = (60, 64, 40)) -> CaseVolumes:
    rng = np.random.default_rng(seed)
    x, y, z = np.mgrid[: shape[0], : shape[1], : shape[2]]
    head = ((x - 30) / 22) ** 2 + ((y - 32) / 26) ** 2 + ((z - 20) / 16) ** 2 < 1
    image = np.stack([head * (100 + 10 * rng.standard_normal(shape)), head * 50.0]).astype(np.float32)
    r2 = (x - 28) ** 2 + (y - 30) ** 2 + (z - 20) ** 2
    label = np.select([r2 < 9, r2 < 25, r2 < 64], [3, 1, 2], 0).astype(np.uint8)
    affine = np.array([[-1.2, 0, 0, 40], [0, 1.1, 0, -30], [0, 0, 2.0, 5], [0, 0, 0, 1]])
    return CaseVolumes(image, ["FLAIR", "T1-Gd"], affine, region_map(label, BRATS), region_map(label, BRATS),
                       np.sqrt(r2).astype(np.float32) / 10)


def test_region_map_codes_the_innermost_region():
    label = np.array([0, 1, 2, 3, 4], dtype=np.uint8)
    assert region_map(label, BRATS).tolist() == [0, 2, 1, 3, 0]


def test_encoded_case_is_cropped_sampled_on_the_same_world_grid_and_within_its_bound():
    vol = _case()
    full = encode_case(vol, 50 * MB)
    assert full["stride"] == 1 and set(full["contrasts"]) == {"FLAIR", "T1-Gd"}
    small = encode_case(vol, 0.02 * MB)
    assert small["stride"] > 1 and sum(len(v) for v in small["contrasts"].values()) < 0.02 * MB
    for enc in (full, small):
        pred, unc = _decode(enc["prediction"]), _decode(enc["uncertainty"])
        s = enc["stride"]
        data = np.asarray(pred.dataobj)
        assert data.shape[0] < vol.image.shape[1] // s + 1 and data.max() == 3  # cropped to the head
        start = np.round(np.linalg.solve(vol.affine, pred.affine @ [0, 0, 0, 1])[:3]).astype(int)
        assert np.allclose(pred.affine[:3, :3], vol.affine[:3, :3] * s)
        i, j, k = np.array(enc["focus"])  # the focus voxel is tumour, the same voxel as in the input
        assert data[i, j, k] > 0 and vol.prediction[tuple(start + s * np.array([i, j, k]))] == data[i, j, k]
        # the uncertainty keeps its unit through the header scale (uint8 steps of max/255)
        assert np.allclose(np.asarray(unc.dataobj)[i, j, k], vol.uncertainty[tuple(start + s * np.array([i, j, k]))],
                           atol=enc["uncertainty_max"] / 255)


def test_total_bound_lists_the_rest_without_embedding_them():
    cases = [ViewerCase(f"c{i}", [f"c{i}"], lambda i=i: _case(i)) for i in range(4)]
    encoded, stats = encode_cases(cases, ViewerBounds(case_mb=0.06, max_mb=0.025))
    assert stats.n_cases == 4 and 1 <= stats.n_embedded < 4 and stats.total_mb <= 0.025
    assert stats.largest_case_mb <= 0.06 and stats.not_embedded == [c["name"] for c in encoded if not c["embedded"]]
    assert "not embedded" in stats.sentence()


def test_viewer_bounds_refuse_a_missing_library_and_bad_bounds(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSEG_NIIVUE_JS", str(tmp_path / "absent.js"))
    assert viewer_bounds(None, 4, 60, "predict.review") is None
    assert viewer_bounds(False, 4, 60, "predict.review") is None
    with pytest.raises(ConfigError, match="predict.review=true needs NiiVue"):
        viewer_bounds(True, 4, 60, "predict.review")
    with pytest.raises(ConfigError, match="positive"):
        viewer_bounds(None, 0, 60, "evaluate.viewer")


def test_case_list_by_qc_score_then_by_dice():
    qc = {"a": {"score": 0.2}, "b": {"score": 0.9}, "c": {}}
    assert review_order(["a", "b", "c"], qc, {"a": 0.1}) == ["b", "a", "c"]
    assert review_order(["a", "b", "c"], {}, {"a": 0.9, "b": 0.1, "c": 0.5}) == ["b", "c", "a"]


PROBE = """<script>
(async function () {
  var v = window.medsegViewer, out = {snapshots: []};
  try {
    await v.started;
    v.setLayer('uncertainty', false);
    out.first = v.probe(); out.firstCase = v.caseName; out.snapshots.push(v.snapshot());
    v.setLayer('uncertainty', true); out.withUncertainty = v.probe(); v.setLayer('uncertainty', false);
    v.setLayer('prediction', false); v.setLayer('reference', false); out.bare = v.probe();
    v.setLayer('prediction', true); v.setLayer('reference', true);
    await v.show(v.cases.length - 1); out.second = v.probe(); out.secondCase = v.caseName; out.snapshots.push(v.snapshot());
    out.rows = document.querySelectorAll('#medseg-case-list tbody tr').length;
    document.body.prepend(document.getElementById('medseg-viewer'));  // on top for the screenshot
  } catch (e) { out.exception = String(e && e.stack || e); }
  out.errors = v.errors; out.ready = v.ready;
  var pre = document.createElement('pre'); pre.id = 'medseg-probe'; pre.textContent = JSON.stringify(out);
  pre.style.display = 'none'; document.body.appendChild(pre);
})();
</script>"""

FLAGS = ["--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--window-size=1280,1000", "--virtual-time-budget=30000"]


def _drive(page: Path, artifacts: Path) -> dict:
    """Open ``page`` with the probe in headless Chromium; the probe's findings, snapshots saved."""
    text = page.read_text(encoding="utf-8")
    cut = text.rindex("</body>")
    probe = artifacts / f"probe_{page.name}"
    probe.write_text(text[:cut] + PROBE + text[cut:], encoding="utf-8")
    dom = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=300)
    assert dom.returncode == 0, dom.stderr[-2000:]
    raw = dom.stdout.split('<pre id="medseg-probe" style="display: none;">')[1].split("</pre>")[0]
    out = json.loads(raw.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    for i, url in enumerate(out.pop("snapshots")):
        (artifacts / f"{page.stem}_canvas_{i}.png").write_bytes(base64.b64decode(url.split(",", 1)[1]))
    shot = artifacts / f"{page.stem}_screenshot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--screenshot={shot}", probe.as_uri()], capture_output=True, timeout=300)
    print(f"viewer screenshots: {artifacts}", file=sys.stderr)
    return out


def _check_common(out: dict) -> None:
    assert "exception" not in out, out.get("exception")
    assert out["errors"] == [] and out["ready"], out["errors"]
    first, second = out["first"], out["second"]
    pixels = first["width"] * first["height"]
    assert first["height"] > 300 and first["grey"] > 0.05 * pixels  # the volume is drawn, not blank
    assert out["bare"]["coloured"] < 0.001 * pixels  # all overlays off: grey only
    assert out["secondCase"] != out["firstCase"] and second["checksum"] != first["checksum"]


@pytest.fixture(scope="module")
def report_with_viewer(tiny_dataset: Path, tmp_path_factory) -> Path:
    """``medseg evaluate`` on folders: references, predictions = references (the tumour-free case gets
    a blob), an uncertainty map beside each prediction, the images."""
    root = tmp_path_factory.mktemp("viewer")
    refs, preds, images = (root / n for n in ("refs", "preds", "images"))
    for d in (refs, preds, images):
        d.mkdir()
    for path in sorted(tiny_dataset.glob("labels*/*.nii.gz")):
        img = nib.load(path)
        lab = np.asarray(img.dataobj).astype(np.uint8)
        nib.save(nib.Nifti1Image(lab, img.affine), refs / path.name)
        pred = lab.copy()
        if not lab.any():
            c = np.array(lab.shape) // 2
            pred[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = 2
        nib.save(nib.Nifti1Image(pred, img.affine), preds / path.name)
        from scipy import ndimage

        unc = np.exp(-ndimage.distance_transform_edt(pred == 0) / 2).astype(np.float32) * (pred > 0)
        nib.save(nib.Nifti1Image(unc, img.affine), preds / path.name.replace(".nii.gz", "_uncertainty.nii.gz"))
        split = "imagesTr" if (tiny_dataset / "imagesTr" / path.name).exists() else "imagesTs"
        shutil.copy(tiny_dataset / split / path.name, images / path.name)
    shutil.copy(tiny_dataset / "dataset.json", root / "dataset.json")
    proc = run_medseg(["evaluate", f"evaluate.predictions={preds}", f"evaluate.references={refs}",
                       f"evaluate.images={images}", "evaluate.n_figures=0", "evaluate.viewer=true",
                       "evaluate.viewer_case_mb=1", "hydra.run.dir=eval"], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "eval"


@needs_browser
def test_report_viewer_in_headless_chromium(report_with_viewer: Path, tmp_path: Path):
    html = (report_with_viewer / "report.html").read_text(encoding="utf-8")
    assert "Interactive viewer" in html and "6 of 6 case(s) embedded" in html and "bounds: 1 MB per case" in html
    out = _drive(report_with_viewer / "report.html", tmp_path)
    _check_common(out)
    assert out["rows"] == 6
    first = out["first"]
    # the worst case first: the tumour-free case's false blob (non-enhancing: tumour-core colour only)
    assert first["prediction"][1] > 50 and first["prediction"][0] == first["prediction"][2] == 0
    assert all(n > 20 for n in out["second"]["prediction"]), out["second"]  # the best case, a tumour: every colour
    assert out["withUncertainty"]["checksum"] != first["checksum"]  # the uncertainty overlay draws


@pytest.fixture(scope="module")
def review_dir(run_dir: Path, tiny_dataset: Path, tmp_path_factory) -> Path:
    """``medseg-predict --uncertainty --review`` with the tiny run's artifact on the test images."""
    out = tmp_path_factory.mktemp("review") / "out"
    proc = subprocess.run([str(Path(sys.executable).with_name("medseg-predict")), str(run_dir / "export" / "artifact"),
                           str(tiny_dataset / "imagesTs"), str(out), "--uncertainty", "--review"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@needs_browser
def test_review_page_in_headless_chromium(review_dir: Path, tmp_path: Path):
    summary = json.loads((review_dir / "predictions.json").read_text())
    assert summary["review"]["n_embedded"] == summary["review"]["n_cases"] == 2
    assert summary["review"]["total_mb"] <= summary["review"]["max_mb_bound"]
    out = _drive(review_dir / "review.html", tmp_path)
    _check_common(out)
    assert out["rows"] == 2
    scores = [c["qc"].get("score") for c in summary["cases"]]
    if all(s is not None for s in scores):  # the most suspicious case is listed (and shown) first
        top = max(summary["cases"], key=lambda c: c["qc"]["score"])["case"]
        assert out["firstCase"] == top
