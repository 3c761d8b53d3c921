"""NIfTI reading and writing, and reorientation to RAS.

Arrays come back in the file's own voxel order ``(X, Y, Z[, C])``; the affine maps voxel
indices to RAS+ world millimetres (the NIfTI convention).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from medseg.errors import DataError
from medseg.utils.files import atomic_path

#: Refuse files whose header promises more voxels than this (checked before any allocation).
DEFAULT_MAX_VOXELS = 512 * 512 * 512 * 4

#: First two bytes of every gzip member.
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class NiftiVolume:
    """A NIfTI image: ``data`` in file voxel order, 4x4 ``affine`` (voxel -> RAS mm)."""

    data: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing in mm along the three spatial voxel axes."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def read_header(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file lazily (header only), refusing missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises many types for corrupt headers
        raise DataError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(path, f"expected a NIfTI image, got {type(img).__name__}")
    return img


def read_nifti(path: str | Path, *, ndim: tuple[int, ...] = (3, 4),
               max_voxels: int = DEFAULT_MAX_VOXELS, dtype: type = np.float32) -> NiftiVolume:
    """Read a NIfTI file and validate it.

    The header's shape is checked against ``max_voxels`` before anything is decoded, and a gzip
    stream is inflated under a running byte budget: the image bytes the header promises. A stream
    that holds more (a gzip bomb) or less (truncated) stops early with one line naming the file,
    so memory never exceeds what the header declared.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        ndim: accepted numbers of dimensions.
        max_voxels: header dimensions whose product exceeds this are refused before decoding.
        dtype: dtype of the returned array.

    Raises:
        DataError: missing, unreadable, truncated, oversized gzip stream, wrong dimensionality,
            too large, out of memory, non-finite values, or a singular affine.
    """
    img = read_header(path)
    path = Path(path)
    shape = _checked_shape(img, path, ndim, max_voxels)
    try:
        data = _decode(img, path, shape, dtype)
    except MemoryError as e:
        raise DataError(path, f"out of memory decoding {int(np.prod(shape, dtype=np.int64))} voxels "
                              f"(lower data.max_voxels or free memory)") from e
    except (EOFError, OSError, ValueError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(path, f"truncated or corrupt image data ({type(e).__name__}: {e})") from e
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise DataError(path, f"{bad} voxels are NaN or infinite")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DataError(path, "affine is singular or not finite (broken qform/sform)")
    return NiftiVolume(data=data, affine=affine, path=path)


def _checked_shape(img: nib.Nifti1Image, path: Path, ndim: tuple[int, ...], max_voxels: int) -> tuple[int, ...]:
    """The header's shape (channels of dim 5 folded into dim 4), refused when outside ``ndim`` or
    over ``max_voxels`` (nothing is decoded before this check)."""
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 5 and shape[3] == 1:  # some writers store channels in dim 5
        shape = shape[:3] + shape[4:]
    if len(shape) not in ndim:
        raise DataError(path, f"expected {' or '.join(map(str, ndim))}D image, got shape {shape}")
    n = int(np.prod(shape, dtype=np.int64))
    if n > max_voxels:
        raise DataError(path, f"header dimensions {shape} ({n} voxels) exceed the budget of {max_voxels} voxels "
                              f"(data.max_voxels)")
    if n == 0:
        raise DataError(path, f"image is empty (shape {shape})")
    return shape


def _decode(img: nib.Nifti1Image, path: Path, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """The image data as ``dtype``: gzip streams inflated under the header's byte budget,
    uncompressed files checked for truncation before they are mapped."""
    header = img.header
    raw_dtype = header.get_data_dtype()
    offset = int(img.dataobj.offset)
    nbytes = int(np.prod(img.shape, dtype=np.int64)) * raw_dtype.itemsize
    with open(path, "rb") as f:
        gzipped = f.read(2) == GZIP_MAGIC
    if not gzipped:
        size = path.stat().st_size
        if size < offset + nbytes:
            raise DataError(path, f"truncated: the header promises {offset + nbytes} bytes, the file holds {size}")
        return np.asarray(img.dataobj, dtype=dtype).reshape(shape)
    buf = inflate_bounded(path, offset + nbytes)
    raw = np.ndarray(img.shape, dtype=raw_dtype, buffer=buf, offset=offset, order="F")
    data = raw.astype(dtype)
    del raw, buf
    slope, inter = header.get_slope_inter()
    if slope is not None and (slope, inter or 0.0) != (1.0, 0.0):
        data *= dtype(slope)
        data += dtype(inter or 0.0)
    return data.reshape(shape)


def inflate_bounded(path: str | Path, budget: int, chunk: int = 1 << 20) -> bytearray:
    """Inflate a gzip file (one or more members) into exactly ``budget`` bytes.

    Memory stays within ``budget`` plus one ``chunk``: decoding stops as soon as the stream
    would produce more, so a gzip bomb is refused after at most ``budget`` bytes.

    Raises:
        DataError: the stream holds more or fewer than ``budget`` bytes, or is corrupt.
    """
    out = bytearray(budget)
    pos = 0
    inflater = zlib.decompressobj(wbits=31)
    with open(path, "rb") as f:
        data = f.read(chunk)
        while data:
            piece = inflater.decompress(data, budget - pos + 1)
            pos = _append(out, pos, piece, path)
            if inflater.eof:  # a further gzip member may follow
                data = inflater.unused_data or f.read(chunk)
                if data.strip(b"\0"):
                    inflater = zlib.decompressobj(wbits=31)
                else:
                    data = b""
                continue
            data = inflater.unconsumed_tail or f.read(chunk)
        if not inflater.eof:
            pos = _append(out, pos, inflater.flush(budget - pos + 1), path)
            raise DataError(path, f"truncated gzip stream: it ends after {pos} of the {budget} bytes "
                                  f"the header promises")
    if pos < budget:
        raise DataError(path, f"truncated: the gzip stream holds {pos} of the {budget} bytes the header promises")
    return out


def _append(out: bytearray, pos: int, piece: bytes, path: str | Path) -> int:
    """Copy ``piece`` into ``out`` at ``pos``; refuse a stream that outgrows ``out``."""
    if pos + len(piece) > len(out):
        raise DataError(path, f"gzip stream holds more than the {len(out)} bytes the header promises "
                              f"(stopped decoding there: corrupt file or gzip bomb)")
    out[pos:pos + len(piece)] = piece
    return pos + len(piece)


def write_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray,
                like: nib.Nifti1Image | None = None) -> Path:
    """Write ``data`` with ``affine`` atomically; copy qform/sform codes from ``like`` if given."""
    img = nib.Nifti1Image(data, affine)
    if like is not None:
        img.set_qform(affine, code=int(like.header["qform_code"]) or 1)
        img.set_sform(affine, code=int(like.header["sform_code"]) or 1)
    else:
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return Path(path)


@dataclass(frozen=True)
class Reorientation:
    """How a volume was reoriented to RAS, so that it can be undone exactly.

    ``transform`` is a nibabel orientation transform (3 x 2) from the source axes to RAS.
    """

    transform: np.ndarray
    source_shape: tuple[int, int, int]

    def apply(self, data: np.ndarray) -> np.ndarray:
        """Reorient an array whose first three axes are the source voxel axes."""
        return np.ascontiguousarray(ornt.apply_orientation(data, self.transform))

    def invert(self, data: np.ndarray) -> np.ndarray:
        """Bring an array in RAS voxel order back to the source voxel order."""
        # ``transform`` is also the source orientation relative to RAS, so this is its inverse
        inverse = ornt.ornt_transform(ornt.axcodes2ornt("RAS"), self.transform)
        return np.ascontiguousarray(ornt.apply_orientation(data, inverse))


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, Reorientation]:
    """Permute/flip voxel axes so that they run closest to R, A, S.

    Args:
        data: array whose first three axes are spatial (extra trailing axes are carried along).
        affine: voxel -> world affine of ``data``.

    Returns:
        The reoriented array, its affine (same world positions), and the :class:`Reorientation`.
    """
    shape = tuple(int(s) for s in data.shape[:3])
    transform = ornt.io_orientation(affine)
    reo = Reorientation(transform=transform, source_shape=shape)
    new_affine = affine @ ornt.inv_ornt_aff(transform, shape)
    return reo.apply(data), new_affine, reo
