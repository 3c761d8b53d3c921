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


def test_gzip_streams_are_inflated_within_the_header_budget(tmp_path):
    """Multi-member gzip is read; a stream longer or shorter than the header promises is refused
    in one line naming the file (issue 15)."""
    import gzip

    from medseg.data.io.nifti import inflate_bounded, read_nifti
    from medseg.errors import DataError

    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    raw = nib.Nifti1Image(data, np.eye(4)).to_bytes()
    ok = tmp_path / "ok.nii.gz"
    ok.write_bytes(gzip.compress(raw[:100]) + gzip.compress(raw[100:]))  # two members
    np.testing.assert_array_equal(read_nifti(ok).data, data)
    assert bytes(inflate_bounded(ok, len(raw))) == raw
    longer = tmp_path / "longer.nii.gz"
    longer.write_bytes(gzip.compress(raw + bytes(10_000)))
    with pytest.raises(DataError, match=r"longer\.nii\.gz: gzip stream holds more than the \d+ bytes"):
        read_nifti(longer)
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(raw[:-50]))
    with pytest.raises(DataError, match=r"short\.nii\.gz: truncated"):
        read_nifti(short)
    noisy = nib.Nifti1Image(np.random.default_rng(0).integers(0, 999, (20, 20, 20)).astype(np.int16),
                            np.eye(4)).to_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(noisy)[: len(noisy) // 2])
    with pytest.raises(DataError, match=r"cut\.nii\.gz: truncated") as e:
        read_nifti(cut)
    assert "\n" not in str(e.value)
