"""Batch prediction from an exported artifact, without Hydra or MONAI.

This is the runtime half of ``medseg predict`` and of the ``medseg-predict`` command
(:mod:`medseg.inference.cli`, the Docker image's default). It needs only the runtime dependencies
— numpy, scipy, nibabel, pydicom, torch (or, for the ONNX Runtime backend, onnxruntime as well) —
and imports neither Hydra/OmegaConf nor MONAI (a test checks that). Inputs: a folder of 4D channel-last NIfTI files (``*.nii.gz``), a ``.txt`` list of
paths, or one file. Outputs in OUTPUT: ``<case>.nii.gz`` on each input's grid and
``predictions.json`` (per-case status, seconds, peak RSS). Finished cases are skipped on a rerun; a
bad case is reported and skipped, and the exit status is 2 if any case failed (0 otherwise).
"""

from __future__ import annotations

import importlib.util
import logging
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.config import parse_shard
from medseg.data.io.nifti import read_header, read_nifti, write_nifti
from medseg.errors import ConfigError, DataError, MedsegError, PartialFailure
from medseg.export.artifact import Artifact
from medseg.inference.predictor import CasePredictor
from medseg.utils.files import write_json

log = logging.getLogger(__name__)

#: What loading one input gives: image ``(C, X, Y, Z)``, affine, and the NIfTI header to copy (or None).
Loaded = tuple[np.ndarray, np.ndarray, Any]


@dataclass
class InputCase:
    """One case to predict: its name, main file, loader and (DICOM) source series."""

    name: str
    path: Path
    load: Callable[[], Loaded]
    dicom_series: tuple[Path, ...] = ()


def shard_items(items: list[InputCase], shard: str | None) -> list[InputCase]:
    """The items of one shard ``"i/n"`` (:func:`medseg.config.parse_shard`): every n-th case of the
    name-sorted list, starting at i; all items for ``None``.

    Raises:
        ConfigError: ``shard`` is not ``i/n`` with ``0 <= i < n``.
    """
    try:
        parsed = parse_shard(shard)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if parsed is None:
        return items
    i, n = parsed
    return sorted(items, key=lambda c: c.name)[i::n]


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


def predict_case(item: InputCase, predictor: CasePredictor, art: Artifact, out_dir: Path, seg: bool
                 ) -> dict[str, Any]:
    """Predict one case and write ``<case>.nii.gz`` (and its DICOM SEG when ``seg``); its record
    for ``predictions.json``.

    Raises:
        MedsegError: the case cannot be read or predicted.
    """
    out = out_dir / f"{item.name}.nii.gz"
    image, affine, like = item.load()
    pred = predictor(image, affine, name=str(item.path))
    record: dict[str, Any] = {"case": item.name, "status": "ok", "output": str(out)}
    if seg and item.dicom_series:
        from medseg.data.io.dicom_seg import write_dicom_seg

        version = str(art.metadata.get("versions", {}).get("medseg", ""))
        record["dicom_seg"] = str(write_dicom_seg(out_dir / f"{item.name}.seg.dcm", pred.label, item.dicom_series,
                                                  art.labels.labels, version=version,
                                                  algorithm_version=str(art.metadata.get("weights_sha256", "")),
                                                  model_name=str(art.metadata.get("name", ""))))
    write_nifti(out, pred.label, affine, like=like)  # last: its presence marks the case done
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log.info("predict %s: %.1f s", item.name, pred.seconds)
    return {**record, "seconds": round(pred.seconds, 3), "peak_rss_mb": round(peak_mb, 1),
            "max_foreground_prob": pred.max_foreground_prob, "foreground_voxels": int((pred.label > 0).sum())}


def run_batch(items: Sequence[InputCase], predictor: CasePredictor, art: Artifact, out_dir: Path, *,
              skip_existing: bool = True, dicom_seg: bool | None = None, extra: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """Predict every case, isolating failures; write ``predictions.json``.

    Args:
        items: the cases.
        predictor: built by :func:`medseg.inference.build.build_predictor`.
        art: the artifact (recorded in the summary; labels of DICOM SEG objects).
        out_dir: output folder.
        skip_existing: skip cases whose ``<case>.nii.gz`` exists (a rerun resumes).
        dicom_seg: write DICOM SEG objects for DICOM inputs (``None``: when highdicom is installed).
        extra: more items for the summary.

    Returns:
        The summary without the per-case list.

    Raises:
        PartialFailure: at the end, if any case failed (the others keep their outputs).
    """
    results = []
    seg = want_dicom_seg(dicom_seg, any(c.dicom_series for c in items))
    for item in items:
        out = out_dir / f"{item.name}.nii.gz"
        if skip_existing and out.exists():
            results.append({"case": item.name, "status": "skipped (output exists)", "output": str(out)})
            continue
        try:
            results.append(predict_case(item, predictor, art, out_dir, seg))
        except MedsegError as e:
            log.error("predict %s failed: %s", item.name, e)
            results.append({"case": item.name, "status": "failed", "error": str(e)})
    failed = [r for r in results if r["status"] == "failed"]
    summary = {"artifact": str(art.path), **(extra or {}), "cases": results,
               "n_ok": sum(r["status"] == "ok" for r in results), "n_failed": len(failed),
               "n_skipped": sum(r["status"].startswith("skipped") for r in results)}
    write_json(out_dir / "predictions.json", summary)
    if failed:  # the cases that finished keep their outputs; the stage still exits non-zero
        raise PartialFailure(f"{len(failed)} case(s) failed: " + "; ".join(r["error"] for r in failed)
                             + f" (see {out_dir / 'predictions.json'})")
    return {k: v for k, v in summary.items() if k != "cases"}
