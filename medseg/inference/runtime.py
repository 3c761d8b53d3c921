"""Batch prediction from an exported artifact, without Hydra or MONAI.

This is the runtime half of ``medseg predict`` and of the ``medseg-predict`` command
(:mod:`medseg.inference.cli`, the Docker image's default). It needs only the runtime dependencies — numpy, scipy, nibabel, pydicom, torch (or, for the
ONNX Runtime backend, onnxruntime as well) — and imports neither Hydra/OmegaConf nor MONAI (a test
checks that). Inputs: a folder of 4D channel-last NIfTI files (``*.nii.gz``), a ``.txt`` list of
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
import torch

from medseg.data.io.nifti import read_header, read_nifti, write_nifti
from medseg.inference.predictor import CasePredictor, pick_device
from medseg.inference.targets import Target
from medseg.errors import ArtifactError, ConfigError, DataError, MedsegError, PartialFailure
from medseg.export.artifact import Artifact, load_artifact
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


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; ``None`` for no sharding."""
    if shard in (None, "", "null"):
        return None
    try:
        i, n = (int(x) for x in str(shard).split("/"))
    except ValueError as e:
        raise ConfigError(f"predict.shard={shard!r} must look like i/n, e.g. 0/4") from e
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"predict.shard={shard!r}: need 0 <= i < n")
    return i, n


def shard_items(items: list[InputCase], shard: tuple[int, int] | None) -> list[InputCase]:
    """The items of one shard: every n-th case of the name-sorted list, starting at i."""
    if shard is None:
        return items
    i, n = shard
    return sorted(items, key=lambda c: c.name)[i::n]


def predictor_from_artifact(art: Artifact, inf_cfg: dict[str, Any], ensemble: Sequence[Artifact] = (),
                            backend: str = "torch") -> CasePredictor:
    """A :class:`CasePredictor` running the artifact's network with ``backend`` (averaged with the
    ``ensemble`` artifacts, which must take the same input and give the same output)."""
    if inf_cfg.get("threads"):
        torch.set_num_threads(int(inf_cfg["threads"]))
    device = pick_device(str(inf_cfg.get("device", "auto")))
    for other in ensemble:
        for key in ("input", "output"):
            if {k: v for k, v in other.metadata[key].items() if k != "patch_size"} != \
                    {k: v for k, v in art.metadata[key].items() if k != "patch_size"}:
                raise ArtifactError(f"{other.path}: its {key} differs from {art.path}'s; "
                                    f"only models with the same preprocessing and outputs can be ensembled")
    nets = [a.network(backend, device, inf_cfg.get("threads"), str(inf_cfg.get("precision", "fp32")))
            for a in (art, *ensemble)]
    return CasePredictor(nets, art.spec, art.patch_size,
                         Target.from_json(art.metadata["output"]), overlap=float(inf_cfg.get("overlap", 0.5)),
                         batch_size=int(inf_cfg.get("sw_batch_size", 2)), tta_axes=inf_cfg.get("tta_flips") or [],
                         min_component_ml=_min_component(art, inf_cfg),
                         max_memory_gb=inf_cfg.get("max_memory_gb"), model_cfg=art.metadata.get("network"),
                         stitch_dtype=str(inf_cfg.get("stitch_dtype", "float32")))


def _min_component(art: Artifact, inf_cfg: dict[str, Any]) -> float:
    """The configured minimum component size, else the one recorded in the artifact."""
    if inf_cfg.get("min_component_ml") is not None:
        return float(inf_cfg["min_component_ml"])
    return float(art.metadata.get("postprocessing", {}).get("min_component_ml", 0.0))


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


def _want_seg(mode: str, dicom_input: bool) -> bool:
    """Whether to write DICOM SEG objects (``auto``: when highdicom is installed)."""
    mode = str(mode).lower()
    if mode not in ("auto", "true", "false"):
        raise ConfigError(f"predict.dicom_seg={mode!r} is not known; valid: auto, true, false")
    if mode == "false" or not dicom_input:
        return False
    if mode == "true":
        return True
    if importlib.util.find_spec("highdicom") is None:
        log.warning("predict.dicom_seg=auto: highdicom is not installed, no DICOM SEG written")
        return False
    return True


def run_batch(items: Sequence[InputCase], predictor: CasePredictor, art: Artifact, out_dir: Path, *,
              skip_existing: bool = True, dicom_seg: str = "auto", extra: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """Predict every case, isolating failures; write ``predictions.json``; raise
    :class:`PartialFailure` at the end if any case failed."""
    results = []
    seg = _want_seg(dicom_seg, any(c.dicom_series for c in items))
    for item in items:
        out = out_dir / f"{item.name}.nii.gz"
        if skip_existing and out.exists():
            results.append({"case": item.name, "status": "skipped (output exists)", "output": str(out)})
            continue
        try:
            image, affine, like = item.load()
            pred = predictor(image, affine, name=str(item.path))
            record: dict[str, Any] = {}
            if seg and item.dicom_series:
                from medseg.data.io.dicom_seg import write_dicom_seg

                seg_path = write_dicom_seg(out_dir / f"{item.name}.seg.dcm", pred.label, item.dicom_series,
                                           art.labels.labels, version=str(art.metadata.get("versions", {})
                                                                             .get("medseg", "")))
                record["dicom_seg"] = str(seg_path)
            write_nifti(out, pred.label, affine, like=like)  # last: its presence marks the case done
        except MedsegError as e:
            log.error("predict %s failed: %s", item.name, e)
            results.append({"case": item.name, "status": "failed", "error": str(e)})
            continue
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        results.append({"case": item.name, "status": "ok", "output": str(out), **record,
                        "seconds": round(pred.seconds, 3), "peak_rss_mb": round(peak_mb, 1),
                        "max_foreground_prob": pred.max_foreground_prob,
                        "foreground_voxels": int((pred.label > 0).sum())})
        log.info("predict %s: %.1f s", item.name, pred.seconds)
    failed = [r for r in results if r["status"] == "failed"]
    summary = {"artifact": str(art.path), **(extra or {}), "cases": results,
               "n_ok": sum(r["status"] == "ok" for r in results), "n_failed": len(failed),
               "n_skipped": sum(r["status"].startswith("skipped") for r in results)}
    write_json(out_dir / "predictions.json", summary)
    if failed:  # the cases that finished keep their outputs; the stage still exits non-zero
        raise PartialFailure(f"{len(failed)} case(s) failed: " + "; ".join(r["error"] for r in failed)
                             + f" (see {out_dir / 'predictions.json'})")
    return {k: v for k, v in summary.items() if k != "cases"}
