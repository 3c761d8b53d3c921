"""Network definitions."""

from medseg.models.unet import Slicewise, activation_types, build_model, build_unet

__all__ = ["Slicewise", "build_model", "build_unet", "activation_types"]
