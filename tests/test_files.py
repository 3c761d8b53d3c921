import os
import stat

import pytest

from medseg.utils.files import atomic_dir, atomic_path, read_json, write_json
from medseg.errors import DataError


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_atomic_files_get_normal_permissions(tmp_path):
    write_json(tmp_path / "a.json", {"a": 1})
    mode = stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH
    assert read_json(tmp_path / "a.json") == {"a": 1}


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "entry"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "image.npy").write_bytes(b"x")
            raise RuntimeError
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "image.npy").write_bytes(b"x")
    assert (target / "image.npy").read_bytes() == b"x"


def test_read_json_errors_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(DataError, match=r"missing\.json: file not found"):
        read_json(tmp_path / "missing.json")
