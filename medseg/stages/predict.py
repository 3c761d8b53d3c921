"""``predict``: run an exported artifact on a folder of cases.

Needs only the artifact (``paths.artifact``) and the input folder (``paths.input``): no training
config, no checkpoint. Each input is a 4D NIfTI with channels last in the order the artifact's
metadata lists. Writes ``<case>.nii.gz`` label maps on each input's own grid (same shape and
affine) and ``predictions.json`` with per-case status, time and peak memory. Cases whose output
already exists are skipped (``predict.skip_existing``); a bad case is reported and skipped, and
the stage fails at the end if any case failed.
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from medseg.data.io.nifti import read_header, read_nifti, write_nifti
from medseg.engine.inference import CasePredictor, torch_network
from medseg.engine.trainer import pick_device
from medseg.errors import DataError, MedsegError, PartialFailure
from medseg.export.artifact import Artifact, load_artifact
from medseg.stages.common import plain, require_path
from medseg.utils.files import write_json

log = logging.getLogger(__name__)


def case_name(path: Path) -> str:
    """File name without ``.nii.gz`` / ``.nii``."""
    return path.name.removesuffix(".gz").removesuffix(".nii")


def predictor_from_artifact(art: Artifact, inf_cfg: dict[str, Any]) -> CasePredictor:
    """A :class:`CasePredictor` running the artifact's TorchScript module."""
    if inf_cfg.get("threads"):
        torch.set_num_threads(int(inf_cfg["threads"]))
    device = pick_device(str(inf_cfg.get("device", "auto")))
    art.module.to(device)
    return CasePredictor(torch_network(art.module, device), art.spec, art.patch_size,
                         int(art.metadata["output"]["num_classes"]), overlap=float(inf_cfg["overlap"]),
                         batch_size=int(inf_cfg["sw_batch_size"]), tta_axes=inf_cfg.get("tta_flips", []),
                         min_component_ml=_min_component(art, inf_cfg))


def _min_component(art: Artifact, inf_cfg: dict[str, Any]) -> float:
    """The configured minimum component size, else the one recorded in the artifact."""
    if inf_cfg.get("min_component_ml") is not None:
        return float(inf_cfg["min_component_ml"])
    return float(art.metadata.get("postprocessing", {}).get("min_component_ml", 0.0))


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


def predict_stage(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run the predict stage (see module docstring)."""
    art = load_artifact(require_path(cfg, "artifact", "predict"))
    inputs = require_path(cfg, "input", "predict")
    files = list_inputs(inputs, str(cfg.predict.pattern))
    if not files:
        raise DataError(inputs, f"no files match predict.pattern={cfg.predict.pattern!r}")
    predictor = predictor_from_artifact(art, plain(cfg.predict.inference))
    n_channels = len(art.spec.channels)
    results = []
    for f in files:
        name = case_name(f)
        out = out_dir / f"{name}.nii.gz"
        if cfg.predict.skip_existing and out.exists():
            results.append({"case": name, "status": "skipped (output exists)", "output": str(out)})
            continue
        try:
            image, affine = load_input(f, n_channels)
            pred = predictor(image, affine, name=str(f))
            write_nifti(out, pred.label, affine, like=read_header(f))
        except MedsegError as e:
            log.error("predict %s failed: %s", name, e)
            results.append({"case": name, "status": "failed", "error": str(e)})
            continue
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        results.append({"case": name, "status": "ok", "output": str(out), "seconds": round(pred.seconds, 3),
                        "peak_rss_mb": round(peak_mb, 1), "max_foreground_prob": pred.max_foreground_prob,
                        "foreground_voxels": int((pred.label > 0).sum())})
        log.info("predict %s: %.1f s", name, pred.seconds)
    failed = [r for r in results if r["status"] == "failed"]
    summary = {"artifact": str(art.path), "input": str(inputs), "cases": results,
               "n_ok": sum(r["status"] == "ok" for r in results), "n_failed": len(failed),
               "n_skipped": sum(r["status"].startswith("skipped") for r in results)}
    write_json(out_dir / "predictions.json", summary)
    if failed:  # the cases that finished keep their outputs; the stage still exits non-zero
        raise PartialFailure(f"{len(failed)} case(s) failed: " + "; ".join(r["error"] for r in failed)
                         + f" (see {out_dir / 'predictions.json'})")
    return {k: v for k, v in summary.items() if k != "cases"}
