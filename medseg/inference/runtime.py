"""Batch prediction from an exported artifact, without Hydra or MONAI.

This is the runtime half of ``medseg predict`` and of the ``medseg-predict`` command
(:mod:`medseg.inference.cli`, the Docker image's default). It needs only the runtime dependencies
— numpy, scipy, nibabel, pydicom, torch (or, for the ONNX Runtime backend, onnxruntime as well) —
and imports neither Hydra/OmegaConf nor MONAI (a test checks that). Inputs: a folder of 4D channel-last NIfTI files (``*.nii.gz``), a ``.txt`` list of
paths, or one file — or per-contrast BraTS 2023/2021 and nnU-Net folders
(:mod:`medseg.inference.layouts`).
Outputs in OUTPUT: ``<case>.nii.gz`` on each input's grid in the label coding asked for, and
``predictions.json`` (label coding, per-case status, seconds, peak RSS). Finished cases are skipped on a rerun; a
bad case is reported and skipped, and the exit status is 2 if any case failed (0 otherwise). A shard
``i/n`` of a batch writes ``predictions.shard-i-of-n.json`` (and ``review.shard-i-of-n.html``)
instead, so the workers of one batch can share an output folder (:func:`batch_file_names`).
"""

from __future__ import annotations

import importlib.util
import logging
import resource
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.config import parse_shard
from medseg.data.io.nifti import read_header, read_nifti, write_nifti
from medseg.errors import ConfigError, DataError, MedsegError, PartialFailure, case_error
from medseg.data.labels import encode_labels, output_codes
from medseg.export.artifact import Artifact
from medseg.inference.missing import missing_channel_policy
from medseg.inference.predictor import CasePredictor
from medseg.inference.qc import batch_review, case_review
from medseg.inference.review import write_review
from medseg.utils.files import write_json
from medseg.utils.niivue import ViewerBounds

log = logging.getLogger(__name__)

#: What loading one input gives: image ``(C, X, Y, Z)``, affine, and the NIfTI header to copy (or None).
Loaded = tuple[np.ndarray, np.ndarray, Any]


@dataclass
class InputCase:
    """One case to predict: its name, main file, loader and (DICOM) source series.

    ``missing_channels``: contrasts the case lacks (its loader gives them as zeros); the model must
    accept that subset (:func:`medseg.inference.missing.missing_channel_policy`). ``details``: more
    items for its ``predictions.json`` record (e.g. ``contrasts``: why each DICOM series was chosen).
    """

    name: str
    path: Path
    load: Callable[[], Loaded]
    dicom_series: tuple[Path, ...] = ()
    missing_channels: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)


def shard_items(items: list[InputCase], shard: str | None) -> list[InputCase]:
    """The items of one shard ``"i/n"`` (:func:`medseg.config.parse_shard`): every n-th case of the
    name-sorted list, starting at i; all items for ``None``.

    Raises:
        ConfigError: ``shard`` is not ``i/n`` with ``0 <= i < n``.
    """
    parsed = _shard(shard)
    if parsed is None:
        return items
    i, n = parsed
    return sorted(items, key=lambda c: c.name)[i::n]


def _shard(shard: str | None) -> tuple[int, int] | None:
    """:func:`medseg.config.parse_shard`, its error a :class:`ConfigError`."""
    try:
        return parse_shard(shard)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def batch_file_names(shard: str | None) -> tuple[str, str]:
    """The names of a batch's summary and review page: ``predictions.json`` and ``review.html``,
    or for shard ``"i/n"`` ``predictions.shard-i-of-n.json`` and ``review.shard-i-of-n.html``, so
    that n workers writing into one folder keep each other's summaries.

    >>> batch_file_names(None), batch_file_names("1/4")
    (('predictions.json', 'review.html'), ('predictions.shard-1-of-4.json', 'review.shard-1-of-4.html'))
    """
    parsed = _shard(shard)
    if parsed is None:
        return "predictions.json", "review.html"
    tag = f"shard-{parsed[0]}-of-{parsed[1]}"
    return f"predictions.{tag}.json", f"review.{tag}.html"


def case_name(path: Path) -> str:
    """File name without ``.nii.gz`` / ``.nii``."""
    return path.name.removesuffix(".gz").removesuffix(".nii")


def load_input(path: Path, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a 4D channel-last NIfTI as ``(C, X, Y, Z)`` plus its affine."""
    vol = read_nifti(path, ndim=(3, 4))
    data = vol.data if vol.data.ndim == 4 else vol.data[..., None]
    if data.shape[-1] != n_channels:
        raise DataError(path, f"expected {n_channels} channels, got {data.shape[-1]}")
    return np.ascontiguousarray(np.moveaxis(data, -1, 0)), vol.affine


def list_inputs(inputs: Path, pattern: str) -> list[Path]:
    """Input files: a folder (files matching ``pattern``), a ``.txt`` list of paths, or one file."""
    if inputs.is_dir():
        return sorted(inputs.glob(pattern))
    if inputs.suffix == ".txt":
        lines = inputs.read_text(encoding="utf-8").splitlines()
        return [Path(line.strip()) for line in lines if line.strip() and not line.startswith("#")]
    return [inputs]


def file_inputs(inputs: Path, pattern: str, n_channels: int) -> list[InputCase]:
    """``(name, path, loader)`` of 4D NIfTI inputs; loaders return ``(image, affine, like header)``."""
    files = list_inputs(inputs, pattern)
    if not files:
        raise DataError(inputs, f"no files match predict.pattern={pattern!r}")

    def loader(f: Path) -> Callable[[], Loaded]:
        return lambda: (*load_input(f, n_channels), read_header(f))

    return [InputCase(case_name(f), f, loader(f)) for f in files]


def want_dicom_seg(dicom_seg: bool | None, dicom_input: bool) -> bool:
    """Whether to write DICOM SEG objects: only for DICOM inputs; ``predict.dicom_seg=None`` (auto)
    when highdicom is installed."""
    if not dicom_input or dicom_seg is False:
        return False
    if dicom_seg:
        return True
    if importlib.util.find_spec("highdicom") is None:
        log.warning("predict.dicom_seg unset: highdicom is not installed, no DICOM SEG written")
        return False
    return True


def predict_case(item: InputCase, predictor: CasePredictor, art: Artifact, out_dir: Path, seg: bool,
                 coding: str = "msd", uncertainty: bool = False) -> dict[str, Any]:
    """Predict one case and write ``<case>.nii.gz`` in the label ``coding`` (a key of
    :data:`medseg.data.labels.CONVENTIONS`; and its DICOM SEG when ``seg``; and
    ``<case>_uncertainty.nii.gz`` when ``uncertainty``); its record for ``predictions.json``, with
    its ``qc`` record when the predictor computes uncertainty (:mod:`medseg.inference.qc`).

    Raises:
        MedsegError: the case cannot be read or predicted.
    """
    out = out_dir / f"{item.name}.nii.gz"
    record: dict[str, Any] = {"case": item.name, "status": "ok", "output": str(out), **item.details}
    if item.missing_channels:
        record["missing_channels"] = list(check_missing_channels(item, art))
    image, affine, like = item.load()
    pred = predictor(image, affine, name=str(item.path))
    if seg and item.dicom_series:
        from medseg.data.io.dicom_seg import write_dicom_seg

        version = str(art.metadata.get("versions", {}).get("medseg", ""))
        record["dicom_seg"] = str(write_dicom_seg(out_dir / f"{item.name}.seg.dcm", pred.label, item.dicom_series,
                                                  art.labels.labels, version=version,
                                                  algorithm_version=str(art.metadata.get("weights_sha256", "")),
                                                  model_name=str(art.metadata.get("name", ""))))
    record.update(case_review(item.name, image, affine, like, pred.label, pred.uncertainty, art.metadata, out_dir,
                              uncertainty))
    write_nifti(out, encode_labels(pred.label, coding, str(out)), affine, like=like)  # last: marks the case done
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log.info("predict %s: %.1f s", item.name, pred.seconds)
    return {**record, "seconds": round(pred.seconds, 3), "peak_rss_mb": round(peak_mb, 1),
            "max_foreground_prob": pred.max_foreground_prob, "foreground_voxels": int((pred.label > 0).sum()),
            **({"enhancing_relabelled_ml": round(pred.enhancing_relabelled_ml, 4)}
               if pred.enhancing_relabelled_ml is not None else {})}


def check_missing_channels(item: InputCase, art: Artifact) -> tuple[str, ...]:
    """The channels ``item`` lacks, when the artifact accepts that subset.

    Raises:
        DataError: naming the case's file and the missing contrast, when it does not.
    """
    channels = art.spec.channels
    policy = missing_channel_policy(art.metadata, [c for c in channels if c not in item.missing_channels])
    if not policy.accepted:
        raise DataError(item.path, f"case {item.name} {policy.message}")
    return policy.missing


def review_page(path: Path, items: Sequence[InputCase], results: Sequence[dict[str, Any]], art: Artifact,
                coding: str, bounds: ViewerBounds) -> dict[str, Any]:
    """Write the review page ``path`` and return its sizes for the summary; a failure to write it is
    logged and recorded there (the predictions stand)."""
    try:
        stats = write_review(path, items, results, art, coding, bounds)
    except (MedsegError, OSError) as e:
        log.error("%s not written: %s", path.name, e)
        return {"error": str(e)}
    return {"path": str(path), **asdict(stats)}


def failed_case(item: InputCase, error: Exception) -> dict[str, Any]:
    """The ``predictions.json`` record of a case that raised ``error``: medseg's own errors and
    memory exhaustion, or a library's error on data nobody foresaw, in one line naming the file
    (the traceback of an unforeseen one only in the debug log)."""
    if not isinstance(error, (MedsegError, MemoryError)):
        log.debug("predict %s: unexpected %s", item.name, type(error).__name__, exc_info=True)
    error = case_error(item.path, error)
    log.error("predict %s failed: %s", item.name, error)
    missing = {"missing_channels": list(item.missing_channels)} if item.missing_channels else {}
    return {"case": item.name, "status": "failed", "error": str(error), **missing}


def run_batch(items: Sequence[InputCase], predictor: CasePredictor, art: Artifact, out_dir: Path, *,
              skip_existing: bool = True, dicom_seg: bool | None = None, extra: dict[str, Any] | None = None,
              coding: str = "msd", uncertainty: bool = False, review: ViewerBounds | None = None,
              shard: str | None = None) -> dict[str, Any]:
    """Predict every case, isolating failures; write ``predictions.json`` (with every case's ``qc``
    record and the batch's ``qc`` summary: the cases to review).

    Args:
        items: the cases.
        predictor: built by :func:`medseg.inference.build.build_predictor`.
        art: the artifact (recorded in the summary; labels of DICOM SEG objects).
        out_dir: output folder.
        skip_existing: skip cases whose ``<case>.nii.gz`` exists (a rerun resumes).
        dicom_seg: write DICOM SEG objects for DICOM inputs (``None``: when highdicom is installed).
        extra: more items for the summary.
        coding: label coding of the written label maps (stated in the summary with each code's name).
        uncertainty: also write each case's ``<case>_uncertainty.nii.gz``.
        review: also write ``review.html`` (:mod:`medseg.inference.review`) within these size bounds.
        shard: the ``i/n`` shard ``items`` are (recorded; names the summary and the review page,
            :func:`batch_file_names`).

    Returns:
        The summary without the per-case list, with ``summary_path``.

    Raises:
        PartialFailure: at the end, if any case failed (the others keep their outputs).
    """
    summary_name, review_name = batch_file_names(shard)
    results = []
    predictor.uncertainty = True  # the QC record needs the uncertainty summaries
    seg = want_dicom_seg(dicom_seg, any(c.dicom_series for c in items))
    for item in items:
        out = out_dir / f"{item.name}.nii.gz"
        if skip_existing and out.exists():
            results.append({"case": item.name, "status": "skipped (output exists)", "output": str(out)})
            continue
        try:
            results.append(predict_case(item, predictor, art, out_dir, seg, coding, uncertainty))
        except Exception as e:  # noqa: BLE001 - one case's failure, whatever raised it, never the batch's
            results.append(failed_case(item, e))
    failed = [r for r in results if r["status"] == "failed"]
    codes = {code: art.labels.labels[k] for k, code in output_codes(coding).items() if k in art.labels.labels}
    summary = {"artifact": str(art.path), **(extra or {}), "shard": shard, "labels": coding,
               "label_codes": {str(c): codes[c] for c in sorted(codes)},
               "postprocessing": {"min_component_ml": predictor.min_component_ml,
                                  "min_enhancing_ml": predictor.min_enhancing_ml,
                                  "min_enhancing_source": predictor.enhancing_source},
               "cases": results,
               "n_ok": sum(r["status"] == "ok" for r in results), "n_failed": len(failed),
               "n_skipped": sum(r["status"].startswith("skipped") for r in results), "qc": batch_review(results)}
    if review is not None:
        summary["review"] = review_page(out_dir / review_name, items, results, art, coding, review)
    write_json(out_dir / summary_name, summary)
    if failed:  # the cases that finished keep their outputs; the stage still exits non-zero
        raise PartialFailure(f"{len(failed)} case(s) failed: " + "; ".join(r["error"] for r in failed)
                             + f" (see {out_dir / summary_name})")
    return {**{k: v for k, v in summary.items() if k != "cases"}, "summary_path": str(out_dir / summary_name)}
