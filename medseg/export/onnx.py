"""ONNX export and the ONNX Runtime backend.

The network is exported with opset 17 and dynamic batch and spatial axes (any window size the
U-Net's strides divide), input ``image`` ``(B, C, X, Y, Z)``, output ``logits``. ONNX Runtime runs
it on CPU (or CUDA when ``onnxruntime-gpu`` is installed and the device asks for it). Both packages
are optional (``pip install 'medseg[onnx]'``); a clear error says so when they are missing.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from medseg.inference.sliding_window import Network
from medseg.errors import ArtifactError, ConfigError
from medseg.utils.files import atomic_path

log = logging.getLogger(__name__)

OPSET = 17
INPUT, OUTPUT = "image", "logits"


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int = OPSET) -> Path:
    """Write ``model`` as ONNX with dynamic batch and spatial axes (atomically)."""
    try:
        import onnx
    except ImportError as e:
        raise ConfigError("ONNX export needs the onnx package: pip install 'medseg[onnx]' "
                          "(or export.onnx=false)") from e
    spatial = {i + 2: f"dim{i}" for i in range(example.ndim - 2)}
    axes = {INPUT: {0: "batch", **spatial}, OUTPUT: {0: "batch", **spatial}}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(tmp), opset_version=opset, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes=axes, dynamo=False)
        onnx.checker.check_model(str(tmp))
    return path


def onnx_session(path: Path, threads: int | None = None, device: str = "cpu"):  # noqa: ANN201 (optional dep)
    """An ONNX Runtime session for ``path``."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ConfigError("the onnxruntime backend needs onnxruntime: pip install 'medseg[onnx]' "
                          "(or predict.backend=torch)") from e
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types
        raise ArtifactError(f"{path}: ONNX Runtime cannot load the model ({e})") from e


def onnx_network(path: Path, threads: int | None = None, device: str = "cpu") -> Network:
    """A network callable (CPU tensor in, CPU float tensor out) running ``path`` in ONNX Runtime."""
    session = onnx_session(path, threads, device)
    name = session.get_inputs()[0].name

    def net(x: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(out)

    return net


def quantize_int8(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantisation of an ONNX model's weights (ONNX Runtime's ``quantize_dynamic``);
    activations stay float and are quantised on the fly. Its speed and Dice cost are measured by
    ``bench/compare.py`` before anyone should use it."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise ConfigError("int8 quantisation needs onnxruntime: pip install 'medseg[onnx]'") from e
    with atomic_path(dst) as tmp:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
    return dst
