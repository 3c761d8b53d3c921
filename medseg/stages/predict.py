"""``predict``: run an exported artifact on a folder of cases.

Needs only the artifact (``paths.artifact``) and the input folder (``paths.input``): no training
config, no checkpoint. With ``predict.source=files`` (default) each input is a 4D NIfTI with
channels last in the order the artifact's metadata lists, or a case of per-contrast files
(``predict.layout``: BraTS 2023/2021, nnU-Net; see :mod:`medseg.inference.layouts`); with
``predict.source=data`` the input is a dataset folder read like ``prepare`` reads one
(``data.source``: BraTS folders, NIfTI patterns, DICOM studies, X-ray DICOM), optionally restricted
to ``predict.cases``. Writes ``<case>.nii.gz`` label maps on each input's own grid in the coding
``predict.labels`` names (same shape and affine; for DICOM the grid built from the first
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
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from medseg.config import Backend, PredictSource, choice
from medseg.data.contrasts import identification_json, missing_files, stand_in, zero_channels
from medseg.data.sources import CaseRef, build_source
from medseg.errors import DataError
from medseg.export.artifact import load_artifact
from medseg.inference.build import build_predictor
from medseg.inference.layouts import discover_inputs, output_coding
from medseg.inference.runtime import InputCase, Loaded, run_batch, shard_items
from medseg.stages.common import require_path
from medseg.utils.niivue import viewer_bounds

log = logging.getLogger(__name__)


def dataset_inputs(data_cfg: Any, inputs: Path, channels: Sequence[str], cases: Sequence[str] = ()
                   ) -> tuple[list[InputCase], str]:
    """Cases of a dataset folder read with the ``data`` source settings (any layout, DICOM too),
    and the label convention of the source (for ``predict.labels=auto``).

    Args:
        data_cfg: the ``data`` section (source kind and options).
        inputs: the dataset folder.
        channels: the channels the model expects, in order.
        cases: only these cases (empty: all).

    Raises:
        DataError: the source gives other channels, or some ``cases`` are not in the dataset.
    """
    source = build_source(data_cfg, inputs)
    if tuple(source.channels) != tuple(channels):
        raise DataError(inputs, f"the {choice(data_cfg.source)} source gives channels {list(source.channels)}, "
                                f"the model expects {list(channels)}")
    source.allow_missing = True  # a study without a series: the artifact's accepted subsets decide
    wanted = set(cases)
    refs = [with_stand_ins(replace(r, label=None), source.channels) for r in source.cases()
            if not wanted or r.name in wanted]
    missing = wanted - {r.name for r in refs}
    if missing:
        raise DataError(inputs, f"predict.cases {sorted(missing)} are not in the dataset")

    def loader(ref: CaseRef) -> Callable[[], Loaded]:
        def load() -> Loaded:
            case = source.load(ref)
            return zero_channels(case.image, source.channels, ref.missing), case.affine, None
        return load

    return ([InputCase(r.name, r.images[0], loader(r), tuple(r.series[0]) if r.series else (),
                       missing_channels=r.missing,
                       details={"contrasts": identification_json(r)} if r.identification else {}) for r in refs],
            source.convention)


def with_stand_ins(ref: CaseRef, channels: Sequence[str]) -> CaseRef:
    """``ref`` with a present channel's files standing in for each missing one (at least one present;
    see :func:`medseg.data.contrasts.stand_in`)."""
    missing = missing_files(ref, channels)
    if not missing or len(missing) == len(channels) or ref.missing:
        return ref
    return stand_in(ref, channels, missing)


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
        items, convention = dataset_inputs(cfg.data, inputs, art.spec.channels,
                                           list(pc.cases) if cases is None else cases)
        layout = f"data.source={choice(cfg.data.source)}"
    else:
        items, layout = discover_inputs(inputs, choice(pc.layout), art.spec.channels, str(pc.pattern))
        convention = layout
    coding = output_coding(choice(pc.labels), convention, art.labels)
    items = shard_items(items, pc.shard)
    predictor = build_predictor(pc.inference, artifact=art, ensemble=ensemble, backend=backend)
    return run_batch(items, predictor, art, out_dir, skip_existing=bool(pc.skip_existing), dicom_seg=pc.dicom_seg,
                     coding=coding, uncertainty=bool(pc.uncertainty),
                     review=viewer_bounds(pc.review, pc.viewer_case_mb, pc.viewer_max_mb, "predict.review"), extra={"input": str(inputs), "layout": layout, "backend": backend,
                                           "shard": pc.shard, "ensemble": [str(a.path) for a in ensemble]})


def predict_stage(cfg: Any, out_dir: Path) -> dict[str, Any]:
    """Run the predict stage (see module docstring)."""
    return predict(cfg, require_path(cfg, "artifact", "predict"), require_path(cfg, "input", "predict"), out_dir)
