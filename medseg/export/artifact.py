"""Artifact format.

An artifact is a folder::

    model.ts        TorchScript module; its extra file ``metadata.json`` embeds the metadata
    model.onnx      the same network in ONNX (opset 17, dynamic batch and spatial axes)
    MODEL_CARD.md   intended use, input specification, training data, metrics, limitations
    medseg_bundle/  a MONAI-bundle-compatible copy (see :mod:`medseg.export.bundle`)
    metadata.json   the metadata plus ``files``: sha256 of every other file, subfolders included

``metadata.json`` describes the inputs (channel names and order, spacing, orientation,
normalisation), the patch size, the outputs (label map and regions), evaluation metrics, library
versions and the sha256 of the trained weights. :func:`load_artifact` checks every hash before
loading anything, so a modified or truncated file is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medseg.data.labels import LabelSpec
from medseg.data.preprocess import PreprocessSpec
from medseg.errors import ArtifactError
from medseg.utils.files import atomic_path, read_json, sha256_file, write_json

log = logging.getLogger(__name__)

FORMAT = "medseg-artifact"
FORMAT_VERSION = 1
MODEL_FILE = "model.ts"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
CARD_FILE = "MODEL_CARD.md"
METADATA_FILE = "metadata.json"
BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")


@dataclass
class Artifact:
    """A loaded artifact: TorchScript module plus parsed metadata."""

    module: torch.jit.ScriptModule | None
    metadata: dict[str, Any]
    path: Path

    def network(self, backend: str = "torch", device: torch.device | str = "cpu", threads: int | None = None,
                precision: str = "fp32"):  # noqa: ANN201
        """A network callable for the sliding window, run by TorchScript (under autocast for
        ``precision``) or ONNX Runtime (fp32)."""
        if backend.startswith("onnxruntime"):
            from medseg.export.onnx import onnx_network

            name = ONNX_INT8_FILE if backend == "onnxruntime-int8" else ONNX_FILE
            if not (self.path / name).is_file():
                raise ArtifactError(f"{self.path}: no {name} in this artifact (export.onnx / export.int8 were off); "
                                    f"use predict.backend=torch")
            return onnx_network(self.path / name, threads, str(device))
        if backend != "torch":
            raise ArtifactError(f"backend {backend!r} is not known; valid: {', '.join(BACKENDS)}")
        if self.module is None:
            raise ArtifactError(f"{self.path}: loaded without its TorchScript module")
        from medseg.inference.predictor import torch_network

        self.module.to(device)
        return torch_network(self.module, torch.device(device), precision)

    @property
    def spec(self) -> PreprocessSpec:
        """Preprocessing the model expects."""
        return PreprocessSpec.from_json(self.metadata["input"]["preprocessing"])

    @property
    def labels(self) -> LabelSpec:
        """Output labels and regions."""
        return LabelSpec.from_json(self.metadata["output"])

    @property
    def patch_size(self) -> list[int]:
        """Sliding-window size the model was trained on."""
        return [int(p) for p in self.metadata["input"]["patch_size"]]


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over parameter names and bytes, in state-dict order."""
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def script_model(model: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript via ``torch.jit.script``, falling back to tracing on ``example``."""
    try:
        return torch.jit.script(model)
    except Exception as e:  # some MONAI versions are not scriptable
        log.warning("torch.jit.script failed (%s); tracing instead", e)
        return torch.jit.trace(model, example, check_trace=False)


def write_artifact(out_dir: Path, scripted: torch.jit.ScriptModule, metadata: dict[str, Any]) -> Path:
    """Write ``model.ts`` (metadata embedded) and ``metadata.json`` with file hashes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **metadata}
    with atomic_path(out_dir / MODEL_FILE) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files={METADATA_FILE: json.dumps(meta, indent=2)})
    files = {p.relative_to(out_dir).as_posix(): sha256_file(p) for p in sorted(out_dir.rglob("*"))
             if p.is_file() and p.relative_to(out_dir).as_posix() != METADATA_FILE
             and not any(part.startswith(".") for part in p.relative_to(out_dir).parts)}
    write_json(out_dir / METADATA_FILE, {**meta, "files": files})
    return out_dir


def load_artifact(path: str | Path, device: str | torch.device = "cpu", load_module: bool = True) -> Artifact:
    """Verify and load an artifact folder (or the ``model.ts`` inside it).

    Every file listed in ``metadata.json`` is hashed before anything is deserialised;
    ``load_module=False`` skips loading the TorchScript module (for the ONNX Runtime backend).

    Raises:
        ArtifactError: missing files, unknown format, or any file whose sha256 differs from
            ``metadata.json``.
    """
    path = Path(path)
    folder = path.parent if path.is_file() else path
    meta_path = folder / METADATA_FILE
    if not meta_path.is_file():
        raise ArtifactError(f"{folder}: not a medseg artifact ({METADATA_FILE} not found)")
    try:
        meta = read_json(meta_path)
    except Exception as e:
        raise ArtifactError(f"{meta_path}: unreadable metadata ({e})") from e
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    files = meta.get("files") or {}
    if MODEL_FILE not in files:
        raise ArtifactError(f"{meta_path}: no sha256 recorded for {MODEL_FILE}")
    for name, digest in files.items():
        f = folder / name
        if not f.is_file():
            raise ArtifactError(f"{f}: listed in {METADATA_FILE} but missing")
        if sha256_file(f) != digest:
            raise ArtifactError(f"{f}: sha256 differs from {METADATA_FILE}; the artifact was modified "
                                f"or damaged, refusing to load it")
    if not load_module:
        return Artifact(module=None, metadata=meta, path=folder)
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(folder / MODEL_FILE), map_location=device, _extra_files=extra)
    except Exception as e:
        raise ArtifactError(f"{folder / MODEL_FILE}: cannot load TorchScript module ({e})") from e
    embedded = json.loads(extra[METADATA_FILE] or "{}")
    if embedded.get("weights_sha256") != meta.get("weights_sha256"):
        raise ArtifactError(f"{meta_path}: weights hash differs from the metadata embedded in {MODEL_FILE}")
    module.eval()
    return Artifact(module=module, metadata=meta, path=folder)
