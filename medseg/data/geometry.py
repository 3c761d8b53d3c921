"""Grid geometry in RAS terms, whatever the voxel order of the file.

A voxel -> world affine maps voxel axes onto world axes (nibabel's RAS+ mm convention); these
helpers reorder a grid's spacing and shape so that entry 0, 1, 2 run along R, A, S.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _ras_axes(affine: np.ndarray) -> np.ndarray:
    """For each voxel axis, the world axis (0 R, 1 A, 2 S) it runs closest to."""
    from nibabel import orientations as ornt

    return ornt.io_orientation(np.asarray(affine))[:, 0].astype(int)


def ras_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Spacing (mm) of a grid along R, A, S.

    Args:
        affine: ``(4, 4)`` voxel -> RAS mm affine.
    """
    zooms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    ras = np.zeros(3)
    ras[_ras_axes(affine)] = zooms
    return tuple(float(z) for z in ras)


def ras_shape(affine: np.ndarray, shape: Sequence[int]) -> list[int]:
    """Shape of a grid with its axes in R, A, S order.

    Args:
        affine: ``(4, 4)`` voxel -> RAS mm affine.
        shape: the grid's shape in voxel order ``(X, Y, Z)``.
    """
    out = [0, 0, 0]
    for axis, n in zip(_ras_axes(affine), shape):
        out[axis] = int(n)
    return out


def foreground_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """The bounding box of a boolean array's true voxels, widened by ``margin`` voxels on each side
    (clipped at 0), as slices; ``None`` when no voxel is true.

    >>> foreground_box(np.array([[0, 0, 0], [0, 1, 1]], dtype=bool))
    (slice(1, 2, None), slice(1, 3, None))
    """
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(max(int(hit[0]) - margin, 0), int(hit[-1]) + 1 + margin))
    return tuple(box)

