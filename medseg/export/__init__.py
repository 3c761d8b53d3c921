"""The self-describing model artifact (TorchScript + metadata.json)."""

from medseg.export.artifact import Artifact, load_artifact, write_artifact

__all__ = ["Artifact", "load_artifact", "write_artifact"]
