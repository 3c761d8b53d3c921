"""Network definitions (:mod:`medseg.models.unet`), checkpoints and the memory model.

The U-Net needs MONAI; its names are imported on first use, so that :mod:`medseg.models.memory`
stays importable by the MONAI-free runtime (``medseg-predict``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Slicewise", "build_model", "build_unet", "activation_types"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from medseg.models import unet

        return getattr(unet, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
