"""Model files (bpcore._modelfile via MLP.save / MLP.load): atomic writes, validating reads.

Promises tested here: a save replaces the file whole or not at all (also when
the writing process dies mid-write); every malformed file -- truncated,
wrong shape or dtype, wrong version, not a bpcore archive, carrying pickled
objects, or a bare .npy -- is a ``ValueError`` that says what is wrong, is
never unpickled, and leaves every model in memory as it was.
"""
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
from conftest import run_python

from bpcore import MLP, _modelfile


def _net(dtype="float32", seed=0):
    return MLP([4, 5, 3], activation="tanh", loss="cross_entropy", dtype=dtype, seed=seed)


def _entries(net):
    return dict(format=np.array("bpcore-mlp"), version=np.array(1, np.int64),
                layer_sizes=np.array(net.layer_sizes, np.int64),
                activations=np.array(net.activations), loss=np.array(net.loss),
                reduction=np.array(net.reduction), dtype=np.array(net.dtype.name),
                params=net.parameters.copy())


def _write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_bitwise(tmp_path, dtype, backend):
    net = _net(dtype)
    path = tmp_path / "m.npz"
    net.save(path)
    back = MLP.load(path, backend=backend)
    assert (back.layer_sizes, back.activations, back.loss, back.reduction, back.dtype) == (
        net.layer_sizes, net.activations, net.loss, net.reduction, net.dtype)
    np.testing.assert_array_equal(back.parameters, net.parameters)
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(dtype)
    np.testing.assert_array_equal(back.predict(x), net.predict(x)) if backend == "compiled" \
        else np.testing.assert_allclose(back.predict(x), net.predict(x), rtol=1e-5, atol=1e-6)


def test_save_leaves_no_temporary_files(tmp_path):
    _net().save(tmp_path / "m.npz")
    _net(seed=1).save(tmp_path / "m.npz")  # overwrite
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    old = _net(seed=0)
    old.save(path)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the temporary file
        raise OSError("disk full")

    monkeypatch.setattr(_modelfile.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        _net(seed=1).save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]  # the temporary file is removed


def test_process_killed_mid_save_keeps_the_old_file(tmp_path):
    # The child dies (os._exit, no cleanup) after writing half of the new
    # archive: the target must still be the complete old file.
    path = tmp_path / "m.npz"
    _net(seed=0).save(path)
    before = path.read_bytes()
    run_python(f"""
        import os
        import numpy as np
        from bpcore import MLP, _modelfile

        def dying_savez(f, **arrays):
            f.write(b"PK\\x03\\x04" + b"x" * 1000)
            f.flush()
            os._exit(3)

        _modelfile.np.savez = dying_savez
        MLP([4, 5, 3], seed=1).save({str(path)!r})
    """, check=False)
    assert path.read_bytes() == before
    np.testing.assert_array_equal(MLP.load(path).parameters, _net(seed=0).parameters)


# ---------------------------------------------------------------------------
# malformed files: ValueError, a clear message, nothing unpickled, models intact
# ---------------------------------------------------------------------------

class _Boom:
    """Unpickling this runs code; a load that unpickles would leave a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bad_files(tmp_path):
    """name -> (writer(path), words the message must contain)."""
    net = _net()
    good = _entries(net)
    marker = str(tmp_path / "UNPICKLED")

    def truncated(path):
        net.save(path)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])

    def truncated_tail(path):
        net.save(path)
        path.write_bytes(path.read_bytes()[:-10])

    def empty(path):
        path.write_bytes(b"")

    def garbage(path):
        path.write_bytes(os.urandom(256))

    def with_entry(**changes):
        def write(path):
            arrays = dict(good, **changes)
            _write_npz(path, **{k: v for k, v in arrays.items() if v is not None})
        return write

    def pickled_entry(path):
        arrays = dict(good, params=np.array([_Boom(marker)], dtype=object))
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    def raw_pickle(path):
        path.write_bytes(pickle.dumps(_Boom(marker)))

    def bare_npy(path):
        with open(path, "wb") as f:
            np.save(f, net.parameters)

    def foreign_zip(path):
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "not numpy")

    def corrupt_member(path):
        buf = io.BytesIO()
        np.savez_compressed(buf, **good)
        data = bytearray(buf.getvalue())
        start = data.index(b"params.npy") + 40
        data[start:start + 64] = os.urandom(64)
        path.write_bytes(bytes(data))

    def huge_header(path):
        # A params entry whose header claims 2**40 floats but holds 64 bytes.
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)})
        with zipfile.ZipFile(path, "w") as z:
            for name, value in good.items():
                entry = io.BytesIO()
                np.lib.format.write_array(entry, value)
                z.writestr(f"{name}.npy", header.getvalue() + b"\0" * 64 if name == "params"
                           else entry.getvalue())

    n = net.n_params
    return {
        "truncated": (truncated, ["not a readable bpcore model file"]),
        "truncated_tail": (truncated_tail, ["not a readable bpcore model file"]),
        "empty": (empty, ["not a readable bpcore model file"]),
        "garbage": (garbage, ["not a readable bpcore model file"]),
        "corrupt_member": (corrupt_member, ["not a readable bpcore model file"]),
        "params_short": (with_entry(params=good["params"][:-1]), ["params", f"({n},)"]),
        "params_2d": (with_entry(params=good["params"].reshape(1, -1)), ["params"]),
        "params_dtype": (with_entry(params=good["params"].astype(np.float64)),
                         ["params", "float32"]),
        "params_int": (with_entry(params=np.zeros(n, np.int64)), ["params", "float32"]),
        "dtype_unknown": (with_entry(dtype=np.array("float16")), ["dtype", "float16"]),
        "version_2": (with_entry(version=np.array(2, np.int64)), ["version", "2"]),
        "version_float": (with_entry(version=np.array(1.0)), ["version"]),
        "version_missing": (with_entry(version=None), ["missing", "version"]),
        "format_other": (with_entry(format=np.array("keras")), ["not a bpcore model", "keras"]),
        "not_bpcore_npz": (lambda p: _write_npz(p, a=np.zeros(3), b=np.ones(2)),
                           ["not a bpcore model file", "missing"]),
        "layer_sizes_zero": (with_entry(layer_sizes=np.array([4, 0, 3])), ["layer_sizes"]),
        "layer_sizes_float": (with_entry(layer_sizes=np.array([4.0, 5.0, 3.0])),
                              ["layer_sizes"]),
        "activations_count": (with_entry(activations=np.array(["tanh"])), ["activations"]),
        "activation_unknown": (with_entry(activations=np.array(["swish", "softmax"])),
                               ["invalid model", "activation", "'relu'"]),
        "loss_unknown": (with_entry(loss=np.array("hinge")), ["invalid model", "loss"]),
        "reduction_unknown": (with_entry(reduction=np.array("median")),
                              ["invalid model", "reduction"]),
        "pickled_entry": (pickled_entry, ["not a readable bpcore model file", "pickled"]),
        "raw_pickle": (raw_pickle, ["not a readable bpcore model file", "pickled"]),
        "bare_npy": (bare_npy, ["single array"]),
        "foreign_zip": (foreign_zip, ["not a readable bpcore model file"]),
        "huge_header": (huge_header, ["not a readable bpcore model file", "declares"]),
    }


BAD = sorted([
    "truncated", "truncated_tail", "empty", "garbage", "corrupt_member", "params_short",
    "params_2d", "params_dtype", "params_int", "dtype_unknown", "version_2", "version_float",
    "version_missing", "format_other", "not_bpcore_npz", "layer_sizes_zero",
    "layer_sizes_float", "activations_count", "activation_unknown", "loss_unknown",
    "reduction_unknown", "pickled_entry", "raw_pickle", "bare_npy", "foreign_zip",
    "huge_header"])


def test_bad_file_list_is_complete(tmp_path):
    assert sorted(_bad_files(tmp_path)) == BAD


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("kind", BAD)
def test_bad_file_is_value_error(tmp_path, kind, backend):
    write, words = _bad_files(tmp_path)[kind]
    path = tmp_path / "bad.npz"
    write(path)
    resident = _net(seed=7)
    before = resident.parameters.copy()
    with pytest.raises(ValueError) as info:
        MLP.load(path, backend=backend)
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, (word, message)
    assert not (tmp_path / "UNPICKLED").exists(), "load unpickled an object"
    np.testing.assert_array_equal(resident.parameters, before)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        MLP.load(tmp_path / "nope.npz")


def test_loaded_model_owns_its_parameters(tmp_path):
    # The loaded block is the model's own aligned block, not the archive's buffer.
    path = tmp_path / "m.npz"
    net = _net()
    net.save(path)
    back = MLP.load(path)
    assert back.parameters.flags.writeable and back.parameters.flags.c_contiguous
    assert back.parameters.ctypes.data % 64 == 0
    back.weights[0][...] = 0
    np.testing.assert_array_equal(MLP.load(path).parameters, net.parameters)
