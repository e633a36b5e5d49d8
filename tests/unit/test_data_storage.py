"""hmoe.data.storage: atomic writes leave all or nothing; split files load or say why not."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hmoe.data import DataError, atomic_write, load_split, save_split, write_json
from hmoe.data.storage import file_md5
from tests.support.synthetic import make_images


class _Boom(RuntimeError):
    pass


def _fail_after_writing(tmp: Path) -> None:
    tmp.write_bytes(b"half a file")
    raise _Boom("disk full")


# --------------------------------------------------------------------------- atomic_write


def test_atomic_write_creates_parents_and_leaves_only_the_target(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.bin"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"payload"))
    assert target.read_bytes() == b"payload"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_atomic_write_temp_is_hidden_sibling_with_same_suffix(tmp_path: Path) -> None:
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_bytes(b"x")

    atomic_write(str(tmp_path / "model.keras"), write)  # str paths are accepted too
    (tmp,) = seen
    assert tmp.parent == tmp_path and tmp.name.startswith(".")
    assert tmp.name.endswith(".keras") and tmp.name != "model.keras"


@pytest.mark.parametrize("existing", [None, b"old contents"])
def test_atomic_write_failure_leaves_target_and_no_temp(
    tmp_path: Path, existing: bytes | None
) -> None:
    target = tmp_path / "out.json"
    if existing is not None:
        target.write_bytes(existing)
    with pytest.raises(_Boom, match="disk full"):
        atomic_write(target, _fail_after_writing)
    if existing is None:
        assert list(tmp_path.iterdir()) == []
    else:
        assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
        assert target.read_bytes() == existing


def test_atomic_write_replaces_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_saves_a_keras_model(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    target = tmp_path / "models" / "tiny.keras"
    atomic_write(target, model.save)
    assert [p.name for p in target.parent.iterdir()] == ["tiny.keras"]
    loaded = keras.models.load_model(target)
    probe = np.ones((1, 3), dtype="float32")
    np.testing.assert_allclose(loaded.predict(probe, verbose=0), model.predict(probe, verbose=0))


# --------------------------------------------------------------------------- write_json


def test_write_json_format(tmp_path: Path) -> None:
    target = tmp_path / "metrics" / "m.json"
    write_json(target, {"b": 1, "a": {"d": 2.5, "c": [1, 2]}})
    text = target.read_text()
    assert text == json.dumps({"a": {"c": [1, 2], "d": 2.5}, "b": 1}, indent=2) + "\n"


def test_write_json_unserialisable_payload_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    write_json(target, {"ok": True})
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


# --------------------------------------------------------------------------- split files


def test_save_and_load_split_round_trip(tmp_path: Path) -> None:
    x, y = make_images(2, seed=0)
    path = tmp_path / "deep" / "prepared" / "train.npz"
    save_split(path, x, y)
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.npz"]  # no temp left
    x2, y2 = load_split(path)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    assert x2.dtype == np.uint8 and y2.dtype == np.int64
    with np.load(path) as npz:
        assert sorted(npz.files) == ["x", "y"]


def test_save_split_keeps_a_name_without_npz_suffix(tmp_path: Path) -> None:
    x, y = make_images(1, seed=0)
    path = tmp_path / "split.bin"
    save_split(path, x, y)
    assert [p.name for p in tmp_path.iterdir()] == ["split.bin"]
    np.testing.assert_array_equal(load_split(path)[1], y)


def _load_error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        load_split(path)
    return str(info.value)


def test_load_split_missing_names_path_and_stage(tmp_path: Path) -> None:
    message = _load_error(tmp_path / "val.npz")
    assert "val.npz" in message and "not found" in message and "dvc repro prepare" in message


def test_load_split_garbage_names_path_and_fix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    message = _load_error(bad)
    assert "bad.npz" in message and "not a readable .npz" in message
    assert "delete it and run `dvc repro prepare`" in message


def test_load_split_missing_array_is_named(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros(2), a=np.zeros(2))
    message = _load_error(wrong)
    assert "wrong.npz" in message and "lacks array(s) y" in message and "dvc repro" in message


def test_load_split_single_array_file(tmp_path: Path) -> None:
    single = tmp_path / "single.npz"
    with single.open("wb") as fh:
        np.save(fh, np.zeros(3))
    message = _load_error(single)
    assert "single.npz" in message and "single array" in message


def test_load_split_truncated_file(tmp_path: Path) -> None:
    x, y = make_images(2, seed=0)
    path = tmp_path / "cut.npz"
    save_split(path, x, y)
    path.write_bytes(path.read_bytes()[:-200])
    message = _load_error(path)
    assert "cut.npz" in message and "dvc repro prepare" in message


def test_load_split_damaged_member(tmp_path: Path) -> None:
    _, y = make_images(2, seed=0)
    path = tmp_path / "damaged.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", b"\x93NUMPY not really")
        with zf.open("y.npy", "w") as fh:
            np.save(fh, y)
    message = _load_error(path)
    assert "damaged.npz" in message and "dvc repro prepare" in message


def test_file_md5_is_the_digest_dvc_records(tmp_path: Path) -> None:
    path = tmp_path / "split.npz"
    x, y = make_images(2, seed=0)
    save_split(path, x, y)
    assert file_md5(path) == hashlib.md5(path.read_bytes()).hexdigest()
    other = tmp_path / "other.npz"
    save_split(other, x[:-1], y[:-1])
    assert file_md5(other) != file_md5(path)
