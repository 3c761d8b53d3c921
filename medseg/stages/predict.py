"""``predict``: run an exported artifact on a folder of cases.

Needs only the artifact (``paths.artifact``) and the input folder (``paths.input``): no training
config, no checkpoint. With ``predict.source=files`` (default) each input is a 4D NIfTI with
channels last in the order the artifact's metadata lists, or a case of per-contrast files
(``predict.layout``: BraTS 2023/2021, nnU-Net; see :mod:`medseg.inference.layouts`); with
``predict.source=data`` the input is a dataset folder read like ``prepare`` reads one
(``data.source``: BraTS folders, NIfTI patterns, DICOM studies, X-ray DICOM), optionally restricted
to ``predict.cases``. DICOM studies (``predict.layout=dicom``, or found so) take the series hints
``predict.series_patterns`` and the mapping file ``predict.series_mapping``, as ``medseg-predict``'s
``--series-pattern`` and ``--series-map``. Writes ``<case>.nii.gz`` label maps on each input's own grid in the coding
``predict.labels`` names (same shape and affine; for DICOM the grid built from the first
channel's series, plus ``<case>.seg.dcm``, a DICOM SEG object referencing that series, with
``predict.dicom_seg``) and ``predictions.json`` with per-case status, time and peak memory. Cases
whose output already exists are skipped (``predict.skip_existing``), so a rerun resumes;
``predict.shard=i/n`` keeps the i-th of n interleaved parts of the sorted case list, so n
independent workers (a Slurm array, a Kubernetes indexed job) split a batch without coordination
(each writes ``predictions.shard-i-of-n.json``, so they can share one output folder).
The network runs in TorchScript (``predict.backend=torch``) or ONNX Runtime
(``predict.backend=onnxruntime``). A bad case is reported and skipped, and the stage fails at the
end if any case failed.

The runtime part lives in :mod:`medseg.inference.runtime`, which the Hydra-free ``medseg-predict`` command
(the Docker image's default) uses too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medseg.config import Backend, PredictSource, choice
from medseg.errors import ConfigError
from medseg.export.artifact import load_artifact
from medseg.inference.build import build_predictor
from medseg.inference.datasets import dataset_inputs
from medseg.inference.layouts import discover_inputs, output_coding
from medseg.inference.runtime import run_batch, shard_items
from medseg.stages.common import require_path
from medseg.utils.niivue import viewer_bounds

log = logging.getLogger(__name__)


def predict(cfg: Any, artifact: Path, inputs: Path, out_dir: Path, cases: list[str] | None = None,
            source: str | None = None) -> dict[str, Any]:
    """Run an exported artifact (with ``predict.ensemble``) on the cases of ``inputs``.

    Args:
        cfg: the config (``predict``; ``data`` for ``source=data``).
        artifact: the artifact folder.
        inputs: 4D NIfTI files (a folder, a ``.txt`` list or one file), or a dataset folder.
        out_dir: where ``<case>.nii.gz`` and ``predictions.json`` go.
        cases: ``source=data`` only: only these cases (``None``: ``predict.cases``).
        source: ``files`` or ``data`` (``None``: ``predict.source``).

    Returns:
        The summary (counts, backend, shard, ensemble).

    Raises:
        PartialFailure: some cases failed (the others keep their outputs).
    """
    pc = cfg.predict
    backend = choice(pc.backend)
    torch_module = backend == Backend.torch.value
    art = load_artifact(artifact, load_module=torch_module)
    ensemble = [load_artifact(p, load_module=torch_module) for p in pc.ensemble]
    if choice(source or pc.source) == PredictSource.data.value:
        if pc.series_patterns or pc.series_mapping:
            raise ConfigError("predict.series_patterns/series_mapping choose the series of DICOM files "
                              "(predict.source=files); with predict.source=data set data.series_patterns/"
                              "data.series_mapping")
        items, convention = dataset_inputs(cfg.data, inputs, art.spec.channels,
                                           list(pc.cases) if cases is None else cases)
        layout = f"data.source={choice(cfg.data.source)}"
    else:
        items, layout = discover_inputs(inputs, choice(pc.layout), art.spec.channels, str(pc.pattern),
                                        dict(pc.series_patterns) or None,
                                        pc.series_mapping or None)
        convention = layout
    coding = output_coding(choice(pc.labels), convention, art.labels)
    items = shard_items(items, pc.shard)
    predictor = build_predictor(pc.inference, artifact=art, ensemble=ensemble, backend=backend)
    return run_batch(items, predictor, art, out_dir, skip_existing=bool(pc.skip_existing), dicom_seg=pc.dicom_seg,
                     coding=coding, uncertainty=bool(pc.uncertainty), shard=pc.shard,
                     review=viewer_bounds(pc.review, pc.viewer_case_mb, pc.viewer_max_mb, "predict.review"),
                     extra={"input": str(inputs), "layout": layout, "backend": backend,
                            "ensemble": [str(a.path) for a in ensemble]})


def predict_stage(cfg: Any, out_dir: Path) -> dict[str, Any]:
    """Run the predict stage (see module docstring)."""
    return predict(cfg, require_path(cfg, "artifact", "predict"), require_path(cfg, "input", "predict"), out_dir)
