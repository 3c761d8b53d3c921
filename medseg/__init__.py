"""medseg: brain-tumour segmentation with a ReLU U-Net, from raw scans to a shipped artifact."""

from __future__ import annotations

__version__ = "0.1.0"
