"""Artifact format.

An artifact is a folder::

    model.ts        TorchScript module; its extra file ``metadata.json`` embeds the metadata
    metadata.json   the same metadata plus ``files``: sha256 of every other file in the folder

``metadata.json`` describes the inputs (channel names and order, spacing, orientation,
normalisation), the patch size, the outputs (label map and regions), evaluation metrics, library
versions and the sha256 of the trained weights. :func:`load_artifact` checks every hash before
loading anything, so a modified or truncated file is refused.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medseg.data.labels import LabelSpec
from medseg.data.preprocess import PreprocessSpec
from medseg.errors import ArtifactError
from medseg.utils.files import atomic_path, read_json, sha256_file, write_json

FORMAT = "medseg-artifact"
FORMAT_VERSION = 1
MODEL_FILE = "model.ts"
METADATA_FILE = "metadata.json"


@dataclass
class Artifact:
    """A loaded artifact: TorchScript module plus parsed metadata."""

    module: torch.jit.ScriptModule
    metadata: dict[str, Any]
    path: Path

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


def library_versions() -> dict[str, str]:
    """Versions of the libraries that matter for reproducing a result."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("medseg", "torch", "monai", "numpy", "nibabel", "pydicom", "hydra-core"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_artifact(out_dir: Path, scripted: torch.jit.ScriptModule, metadata: dict[str, Any]) -> Path:
    """Write ``model.ts`` (metadata embedded) and ``metadata.json`` with file hashes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **metadata}
    with atomic_path(out_dir / MODEL_FILE) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files={METADATA_FILE: json.dumps(meta, indent=2)})
    files = {p.name: sha256_file(p) for p in sorted(out_dir.iterdir())
             if p.is_file() and p.name != METADATA_FILE and not p.name.startswith(".")}
    write_json(out_dir / METADATA_FILE, {**meta, "files": files})
    return out_dir


def load_artifact(path: str | Path, device: str | torch.device = "cpu") -> Artifact:
    """Verify and load an artifact folder (or the ``model.ts`` inside it).

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
