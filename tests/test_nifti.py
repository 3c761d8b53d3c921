import gzip

import nibabel as nib
import numpy as np
import pytest

from medseg.data.io.nifti import read_nifti, to_ras, write_nifti
from medseg.errors import DataError

ORIENTATIONS = {
    "RAS": np.eye(3),
    "LPS": np.diag([-1.0, -1.0, 1.0]),
    "PSR": np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
}


@pytest.mark.parametrize("name", ORIENTATIONS)
def test_to_ras_keeps_world_positions_and_inverts(name):
    affine = np.eye(4)
    affine[:3, :3] = ORIENTATIONS[name] * np.array([1.0, 2.0, 3.0])
    affine[:3, 3] = [10, -5, 3]
    data = np.random.default_rng(0).random((4, 5, 6))
    ras, ras_affine, reo = to_ras(data, affine)
    assert nib.aff2axcodes(ras_affine) == ("R", "A", "S")
    np.testing.assert_array_equal(reo.invert(ras), data)
    for ijk in [(0, 0, 0), (1, 2, 3), (3, 4, 5)]:
        world = affine @ np.array([*ijk, 1.0])
        new = np.linalg.solve(ras_affine, world)[:3]
        np.testing.assert_allclose(new, np.round(new), atol=1e-9)
        assert ras[tuple(np.round(new).astype(int))] == data[ijk]


def test_roundtrip_write_read(tmp_path):
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_nifti(tmp_path / "a.nii.gz", data, affine)
    vol = read_nifti(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(vol.data, data)
    assert vol.spacing == (1.5, 1.5, 2.0)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def _write(path, data, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.nii\.gz: file not found"):
        read_nifti(tmp_path / "nope.nii.gz")


def test_truncated_file(tmp_path):
    path = _write(tmp_path / "t.nii.gz", np.random.default_rng(0).random((20, 20, 20)).astype(np.float32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"t\.nii\.gz: (truncated|not a readable)"):
        read_nifti(path)


def test_not_a_nifti(tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(gzip.compress(b"hello world" * 10))
    with pytest.raises(DataError, match=r"x\.nii\.gz"):
        read_nifti(path)


def test_nan_voxels(tmp_path):
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 1, 1] = np.nan
    with pytest.raises(DataError, match=r"n\.nii\.gz: 1 voxels are NaN or infinite"):
        read_nifti(_write(tmp_path / "n.nii.gz", data))


def test_wrong_dimensionality(tmp_path):
    with pytest.raises(DataError, match=r"expected 3D image, got shape \(4, 4\)"):
        read_nifti(_write(tmp_path / "d.nii.gz", np.zeros((4, 4), np.float32)), ndim=(3,))


def test_voxel_budget_checked_before_reading(tmp_path):
    path = _write(tmp_path / "big.nii.gz", np.zeros((10, 10, 10), np.float32))
    with pytest.raises(DataError, match="exceed the budget"):
        read_nifti(path, max_voxels=999)
