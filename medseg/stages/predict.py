"""``predict``: run an exported artifact on a folder of cases.

Needs only the artifact (``paths.artifact``) and the input folder (``paths.input``): no training
config, no checkpoint. With ``predict.source=files`` (default) each input is a 4D NIfTI with
channels last in the order the artifact's metadata lists; with ``predict.source=data`` the input is
a dataset folder read like ``prepare`` reads one (``data.source``: BraTS folders, NIfTI patterns,
DICOM studies, X-ray DICOM), optionally restricted to ``predict.cases``. Writes ``<case>.nii.gz``
label maps on each input's own grid (same shape and affine; for DICOM the grid built from the first
channel's series, plus ``<case>.seg.dcm``, a DICOM SEG object referencing that series, with
``predict.dicom_seg``) and ``predictions.json`` with per-case status, time and peak memory. Cases
whose output already exists are skipped (``predict.skip_existing``), so a rerun resumes;
``predict.shard=i/n`` keeps the i-th of n interleaved parts of the sorted case list, so n
independent workers (a Slurm array, a Kubernetes indexed job) split a batch without coordination.
The network runs in TorchScript (``predict.backend=torch``) or ONNX Runtime
(``predict.backend=onnxruntime``). A bad case is reported and skipped, and the stage fails at the
end if any case failed.

The runtime part lives in :mod:`medseg.inference.runtime`, which the Hydra-free ``medseg-predict`` command
(the Docker image's default) uses too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medseg.inference.runtime import (InputCase, Loaded, file_inputs, parse_shard, predictor_from_artifact, run_batch,
                          shard_items)
from medseg.config import choice
from medseg.data.sources import CaseRef, make_source
from medseg.errors import DataError
from medseg.export.artifact import load_artifact
from medseg.stages.common import plain, require_path

log = logging.getLogger(__name__)


def dataset_inputs(cfg: DictConfig, inputs: Path, channels: tuple[str, ...]) -> list[InputCase]:
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

    return [InputCase(r.name, r.images[0], loader(r), tuple(r.series[0]) if r.series else ()) for r in refs]


def predict_stage(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run the predict stage (see module docstring)."""
    backend = str(cfg.predict.backend)
    art = load_artifact(require_path(cfg, "artifact", "predict"), load_module=backend == "torch")
    ensemble = [load_artifact(p, load_module=backend == "torch") for p in cfg.predict.ensemble]
    inputs = require_path(cfg, "input", "predict")
    shard = parse_shard(cfg.predict.shard)
    if choice(cfg.predict.source) == "data":
        items = dataset_inputs(cfg, inputs, art.spec.channels)
    else:
        items = file_inputs(inputs, str(cfg.predict.pattern), len(art.spec.channels))
    items = shard_items(items, shard)
    predictor = predictor_from_artifact(art, plain(cfg.predict.inference), ensemble, backend)
    return run_batch(items, predictor, art, out_dir, skip_existing=bool(cfg.predict.skip_existing),
                     dicom_seg=str(cfg.predict.dicom_seg), extra={"input": str(inputs), "backend": backend,
                                                                 "shard": cfg.predict.shard,
                                                                 "ensemble": [str(a.path) for a in ensemble]})


