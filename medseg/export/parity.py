"""Proof that an exported network computes what the eager one does.

Each format (TorchScript, ONNX Runtime) is reloaded from the artifact folder and compared with the
eager model: the largest logit difference on one window, and the fraction of voxels whose label
agrees over a whole real preprocessed case (sliding window). Beyond the tolerances, export fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.config import ExportConfig
from medseg.data.prepared import PreparedDataset
from medseg.errors import ArtifactError
from medseg.export.artifact import load_artifact
from medseg.inference.sliding_window import sliding_window_probs
from medseg.inference.targets import Target


def parity_case(prepared: PreparedDataset | None) -> np.ndarray | None:
    """A preprocessed real case ``(C, X, Y, Z)`` (test first, else validation, else training)."""
    if prepared is None:
        return None
    for split in ("test", "validation", "train"):
        entries = prepared.datalist.get(split)
        if entries:
            return np.load(entries[0]["image"])
    return None


def centre_window(image: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """A patch-sized window from the centre of the image (zero-padded if smaller)."""
    out = np.zeros((image.shape[0], *patch), dtype=np.float32)
    src, dst = [], []
    for n, p in zip(image.shape[1:], patch):
        s = max(0, (n - p) // 2)
        m = min(n, p)
        src.append(slice(s, s + m))
        dst.append(slice(0, m))
    out[(slice(None), *dst)] = image[(slice(None), *src)]
    return out


def parity_inputs(prepared: PreparedDataset | None, in_channels: int, patch: Sequence[int]
                  ) -> tuple[torch.Tensor, np.ndarray | None]:
    """``(example window (1, C, *patch), whole preprocessed case or None)``: the centre window of a
    real case when ``prepared`` has one, else zeros."""
    image = parity_case(prepared)
    if image is None:
        return torch.zeros(1, in_channels, *patch), None
    return torch.from_numpy(centre_window(image, patch))[None], image


def check_parity(model: torch.nn.Module, art_dir: Path, example: torch.Tensor, image: np.ndarray | None,
                 patch: Sequence[int], target: Target, tol: float, min_agree: float, backend: str = "torch"
                 ) -> dict[str, Any]:
    """Reload the artifact, run it with ``backend`` and compare it with the eager model.

    Raises:
        ArtifactError: logits or labels differ beyond ``tol`` / ``min_agree``.
    """
    art = load_artifact(art_dir, load_module=backend == "torch")
    exported = art.network(backend)
    with torch.inference_mode():
        diff = float((model(example) - exported(example)).abs().max())
    agreement = 1.0
    if image is not None:
        x = torch.from_numpy(image)

        def eager(b: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(b)

        a, b = (target.decode(sliding_window_probs(net, x, patch, target.channels, overlap=0.25,
                                                   activation=target.activation)) for net in (eager, exported))
        agreement = float((a == b).mean())
    if diff > tol or agreement < min_agree:
        raise ArtifactError(f"{art_dir}: exported model ({backend}) differs from the eager model "
                            f"(max |logit diff| {diff:.3g} > {tol:g} or label agreement {agreement:.6f} < {min_agree})")
    return {"max_abs_logit_diff": diff, "label_agreement": agreement,
            "parity_case": "real preprocessed case" if image is not None else "zero input"}


def check_formats(export: ExportConfig, model: torch.nn.Module, art_dir: Path, example: torch.Tensor,
                  image: np.ndarray | None, patch: Sequence[int], target: Target) -> dict[str, dict[str, Any]]:
    """:func:`check_parity` of every format written (TorchScript, and ONNX with ``export.onnx``)."""
    backends = ["torch"] + (["onnxruntime"] if export.onnx else [])
    return {b: check_parity(model, art_dir, example, image, patch, target, float(export.logit_tolerance),
                            float(export.min_label_agreement), backend=b) for b in backends}
