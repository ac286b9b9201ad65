"""Model files (bpcore._modelfile via MLP.save / MLP.load): atomic writes, validating reads.

Promises tested here: a save replaces the file whole or not at all (also when
the writing process dies mid-write); every malformed file -- truncated,
wrong shape or dtype, wrong version, not a bpcore archive, carrying pickled
objects, or a bare .npy -- is a ``ValueError`` that says what is wrong, is
never unpickled, and leaves every model in memory as it was; encrypted,
otherwise compressed or unexpected members are rejected before they are read,
and a small file cannot make a load decompress more than its model declares.
A save keeps what users expect of a file: the umask's mode for a new file,
the old mode for an existing one, and symbolic links followed.
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


# ---------------------------------------------------------------------------
# zip members outside the format, and decompression bounded by what the file declares
# ---------------------------------------------------------------------------

def _zip_bytes(members):
    """A zip archive from ``(name, stored bytes, method, crc, uncompressed size, flags)``.

    Written by hand so a test can set fields that zipfile refuses to write
    (the encryption flag, an unknown method) or a deflate stream built cheaply.
    """
    import struct

    out, central = bytearray(), bytearray()
    for name, data, method, crc, size, flags in members:
        raw = name.encode()
        offset = len(out)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, method, 0, 0, crc,
                           len(data), size, len(raw), 0) + raw + data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, flags, method, 0, 0, crc,
                               len(data), size, len(raw), 0, 0, 0, 0, 0, offset) + raw
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members),
                       len(central), len(out), 0)
    return bytes(out + central + eocd)


def _npy_bytes(value):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(value))
    return buf.getvalue()


def _stored(entries, flags=None, method=None):
    """Members of ``entries`` stored; ``flags``/``method``: {name: value} overrides."""
    import zlib

    members = []
    for name, value in entries.items():
        data = _npy_bytes(value)
        members.append((f"{name}.npy", data, (method or {}).get(name, 0), zlib.crc32(data),
                        len(data), (flags or {}).get(name, 0)))
    return members


@pytest.mark.parametrize("kind", ["encrypted", "method_97", "lzma"])
def test_members_outside_the_format_are_value_errors(tmp_path, kind):
    # Old code: encrypted -> RuntimeError (zipfile wants a password), method 97 ->
    # NotImplementedError, LZMA -> loaded (a member the format never writes).
    path = tmp_path / "m.npz"
    good = _entries(_net())
    if kind == "lzma":
        with zipfile.ZipFile(path, "w") as z:
            for name, value in good.items():
                z.writestr(f"{name}.npy", _npy_bytes(value),
                           compress_type=zipfile.ZIP_LZMA if name == "params" else 0)
    else:
        override = {"params": 1} if kind == "encrypted" else None
        method = {"params": 97} if kind == "method_97" else None
        path.write_bytes(_zip_bytes(_stored(good, flags=override, method=method)))
    with pytest.raises(ValueError) as info:
        MLP.load(path)
    message = str(info.value)
    assert str(path) in message and "params.npy" in message, message
    assert {"encrypted": "encrypted", "method_97": "method 97",
            "lzma": "method 14"}[kind] in message, message


def test_unexpected_member_is_rejected(tmp_path):
    path = tmp_path / "m.npz"
    _write_npz(path, **_entries(_net()), surprise=np.zeros(3))
    with pytest.raises(ValueError, match="unexpected entries 'surprise'"):
        MLP.load(path)


def _bomb(good, name, n_bytes):
    """Members of ``good`` plus entry ``name``: a float32 zero vector of ``n_bytes``,
    deflated to about 260 kB (built without compressing it all)."""
    import zlib

    header = _npy_bytes(np.zeros(0, np.float32)).replace(b"(0,)", f"({n_bytes // 4},)".encode())
    header = header[:-1].rstrip(b" ")  # re-pad the header to a multiple of 64 bytes
    header = header + b" " * (-(len(header) + 1) % 64) + b"\n"
    chunk = bytes(1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = comp.compress(header) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    # After a full flush the compressor starts afresh: the same input gives the same bytes.
    assert comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH) == block
    n_chunks = n_bytes >> 20
    data = start + block * n_chunks + comp.flush()
    crc = zlib.crc32(header)
    for _ in range(n_chunks):
        crc = zlib.crc32(chunk, crc)
    members = [m for m in _stored(good) if m[0] != f"{name}.npy"]
    return members + [(f"{name}.npy", data, 8, crc, len(header) + n_bytes, 0)]


@pytest.mark.parametrize("entry", ["extra/junk", "loss"])
def test_a_small_file_cannot_make_load_decompress_much(tmp_path, entry):
    # 256 MiB declared by a ~260 kB file: the old loader inflated all of it
    # (an extra entry loaded; a huge loss string too, then failed later).
    import tracemalloc

    path = tmp_path / "bomb.npz"
    good = _entries(_net())
    path.write_bytes(_zip_bytes(_bomb(good, entry, 256 << 20)))
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            MLP.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value) and entry in str(info.value), str(info.value)
    assert peak < 8 << 20, peak


def test_extra_entries_within_the_budget_load(tmp_path):
    net = _net()
    path = tmp_path / "m.npz"
    velocity = np.arange(net.n_params, dtype=np.float32)
    _modelfile.save(path, layer_sizes=net.layer_sizes, activations=net.activations,
                    loss=net.loss, reduction=net.reduction, dtype=net.dtype,
                    params=net.parameters, extra={"velocity": velocity, "names": ["a", "b"]})
    extra = _modelfile.load(path)["extra"]
    np.testing.assert_array_equal(extra["velocity"], velocity)
    assert extra["names"].tolist() == ["a", "b"]


# ---------------------------------------------------------------------------
# save keeps file semantics: mode from the umask or the old file, links followed
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_new_file_mode_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        _net().save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o664], ids=oct)
def test_existing_file_keeps_its_mode(tmp_path, mode):
    path = tmp_path / "m.npz"
    _net().save(path)
    os.chmod(path, mode)
    _net(seed=1).save(path)
    assert path.stat().st_mode & 0o777 == mode
    np.testing.assert_array_equal(MLP.load(path).parameters, _net(seed=1).parameters)


def test_save_through_a_symlink_replaces_its_target(tmp_path):
    real_dir, link_dir = tmp_path / "real", tmp_path / "links"
    real_dir.mkdir()
    link_dir.mkdir()
    target = real_dir / "m.npz"
    _net().save(target)
    os.chmod(target, 0o640)
    link = link_dir / "m.npz"
    link.symlink_to(os.path.join("..", "real", "m.npz"))  # relative, as users make them
    _net(seed=1).save(link)
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "real", "m.npz")
    assert target.stat().st_mode & 0o777 == 0o640
    np.testing.assert_array_equal(MLP.load(target).parameters, _net(seed=1).parameters)
    assert sorted(os.listdir(real_dir)) == ["m.npz"] and sorted(os.listdir(link_dir)) == [
        "m.npz"]  # the temporary file lived beside the target and is gone
    dangling = link_dir / "new.npz"
    dangling.symlink_to(real_dir / "new.npz")
    _net(seed=2).save(dangling)
    assert dangling.is_symlink() and (real_dir / "new.npz").is_file()
