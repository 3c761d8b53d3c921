"""Network definitions."""

from medseg.models.unet import activation_types, build_unet, describe_model

__all__ = ["build_unet", "activation_types", "describe_model"]
