"""``predict``: run an exported artifact on a folder of cases.

Needs only the artifact (``paths.artifact``) and the input folder (``paths.input``): no training
config, no checkpoint. With ``predict.source=files`` (default) each input is a 4D NIfTI with
channels last in the order the artifact's metadata lists; with ``predict.source=data`` the input is
a dataset folder read like ``prepare`` reads one (``data.source``: BraTS folders, NIfTI patterns,
DICOM studies, X-ray DICOM), optionally restricted to ``predict.cases``. Writes ``<case>.nii.gz``
label maps on each input's own grid (same shape and affine; for DICOM the grid built from the first
channel's series) and ``predictions.json`` with per-case status, time and peak memory. Cases whose output
already exists are skipped (``predict.skip_existing``); a bad case is reported and skipped, and
the stage fails at the end if any case failed.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from medseg.config import choice
from medseg.data.io.nifti import read_header, read_nifti, write_nifti
from medseg.data.sources import CaseRef, make_source
from medseg.engine.inference import CasePredictor, torch_network
from medseg.engine.targets import Target
from medseg.engine.trainer import pick_device
from medseg.errors import ArtifactError, DataError, MedsegError, PartialFailure
from medseg.export.artifact import Artifact, load_artifact
from medseg.stages.common import plain, require_path
from medseg.utils.files import write_json

log = logging.getLogger(__name__)

#: What loading one input gives: image ``(C, X, Y, Z)``, affine, and the NIfTI header to copy (or None).
Loaded = tuple[np.ndarray, np.ndarray, Any]


def case_name(path: Path) -> str:
    """File name without ``.nii.gz`` / ``.nii``."""
    return path.name.removesuffix(".gz").removesuffix(".nii")


def predictor_from_artifact(art: Artifact, inf_cfg: dict[str, Any], ensemble: Sequence[Artifact] = ()
                            ) -> CasePredictor:
    """A :class:`CasePredictor` running the artifact's TorchScript module (averaged with the
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
    nets = []
    for a in (art, *ensemble):
        a.module.to(device)
        nets.append(torch_network(a.module, device))
    return CasePredictor(nets, art.spec, art.patch_size,
                         Target.from_json(art.metadata["output"]), overlap=float(inf_cfg["overlap"]),
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


def file_inputs(inputs: Path, pattern: str, n_channels: int) -> list[tuple[str, Path, Callable[[], Loaded]]]:
    """``(name, path, loader)`` of 4D NIfTI inputs; loaders return ``(image, affine, like header)``."""
    files = list_inputs(inputs, pattern)
    if not files:
        raise DataError(inputs, f"no files match predict.pattern={pattern!r}")

    def loader(f: Path) -> Callable[[], Loaded]:
        return lambda: (*load_input(f, n_channels), read_header(f))

    return [(case_name(f), f, loader(f)) for f in files]


def dataset_inputs(cfg: DictConfig, inputs: Path, channels: tuple[str, ...]
                   ) -> list[tuple[str, Path, Callable[[], Loaded]]]:
    """Cases of a dataset folder read with the ``data`` source settings (any layout, DICOM too)."""
    from medseg.stages.prepare import source_options

    kind = choice(cfg.data.source)
    source = make_source(kind, str(inputs), **source_options(cfg.data))
    if tuple(source.channels) != tuple(channels):
        raise DataError(inputs, f"the {kind} source gives channels {list(source.channels)}, "
                                f"the model expects {list(channels)}")
    wanted = set(cfg.predict.cases or [])
    refs = [replace(r, label=None) for r in source.cases() if not wanted or r.name in wanted]
    missing = wanted - {r.name for r in refs}
    if missing:
        raise DataError(inputs, f"predict.cases {sorted(missing)} are not in the dataset")

    def loader(ref: CaseRef) -> Callable[[], Loaded]:
        def load() -> Loaded:
            case = source.load(ref)
            return case.image, case.affine, None
        return load

    return [(r.name, r.images[0], loader(r)) for r in refs]


def predict_stage(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run the predict stage (see module docstring)."""
    art = load_artifact(require_path(cfg, "artifact", "predict"))
    ensemble = [load_artifact(p) for p in cfg.predict.ensemble]
    inputs = require_path(cfg, "input", "predict")
    if choice(cfg.predict.source) == "data":
        items = dataset_inputs(cfg, inputs, art.spec.channels)
    else:
        items = file_inputs(inputs, str(cfg.predict.pattern), len(art.spec.channels))
    predictor = predictor_from_artifact(art, plain(cfg.predict.inference), ensemble)
    results = []
    for name, f, load in items:
        out = out_dir / f"{name}.nii.gz"
        if cfg.predict.skip_existing and out.exists():
            results.append({"case": name, "status": "skipped (output exists)", "output": str(out)})
            continue
        try:
            image, affine, like = load()
            pred = predictor(image, affine, name=str(f))
            write_nifti(out, pred.label, affine, like=like)
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
    summary = {"artifact": str(art.path), "ensemble": [str(a.path) for a in ensemble], "input": str(inputs),
               "cases": results,
               "n_ok": sum(r["status"] == "ok" for r in results), "n_failed": len(failed),
               "n_skipped": sum(r["status"].startswith("skipped") for r in results)}
    write_json(out_dir / "predictions.json", summary)
    if failed:  # the cases that finished keep their outputs; the stage still exits non-zero
        raise PartialFailure(f"{len(failed)} case(s) failed: " + "; ".join(r["error"] for r in failed)
                         + f" (see {out_dir / 'predictions.json'})")
    return {k: v for k, v in summary.items() if k != "cases"}
