"""Segmentation metrics with stated conventions."""

from medseg.metrics.overlap import EmptyConvention, dice
from medseg.metrics.surface import hausdorff
from medseg.metrics.case import case_metrics

__all__ = ["EmptyConvention", "dice", "hausdorff", "case_metrics"]
