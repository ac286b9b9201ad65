"""bpcore's model file: one ``.npz`` archive, written atomically, read without pickle.

Contents (every entry a plain NumPy array; strings are unicode arrays, so
``np.load(..., allow_pickle=False)`` reads them)::

    format        "bpcore-mlp"
    version       1
    layer_sizes   int64 (n_layers + 1,)
    activations   str (n_layers,), the last one the output activation
    loss          "mse" | "cross_entropy"
    reduction     str
    dtype         "float32" | "float64"
    params        the flat parameter block (W_0, b_0, W_1, b_1, ...)
    extra/<name>  optional arrays a caller adds (optimizer state, RNG state, epoch,
                  the CLI's preprocessing; MLP.save's activation and loss options,
                  ``dropout`` and ``compute_dtype`` when set)

NOTE: a setting added after version 1 rides as an optional extra entry, absent
meaning its old default, so old files load unchanged and the version stays 1;
the version moves only when a reader of version 1 would misread a new file.

Writing goes to a temporary file in the directory of the target, flushed and
fsynced, then renamed over the target: a crash leaves the old file or the new
one, never half of either.  The file keeps what a user expects of a file
written in place (as ``np.save`` or an editor does): a new file gets
``0o666 & ~umask``, an existing one keeps its mode, and a symbolic link is
followed -- its target is replaced, the link stays.

Reading parses the archive itself instead of trusting ``np.load``: only stored
or deflated, unencrypted ``<entry>.npy`` members of the names above; every
``.npy`` header must match its member's size exactly, and those sizes are
checked against the model they describe (``params`` against ``layer_sizes``,
the small entries against a fixed cap, ``extra`` against a budget set by
``params``) before any data is decompressed.  So the memory a load takes is
bounded by the model the file declares, whatever the bytes; every failure is a
``ValueError`` naming the file.
"""
import math
import os
import tokenize
import zipfile
import zlib

import numpy as np

FORMAT = "bpcore-mlp"
VERSION = 1
_REQUIRED = ("format", "version", "layer_sizes", "activations", "loss", "reduction", "dtype",
             "params")
# Each entry but params and extra/* is a scalar or a short list: 64 KiB holds
# a layer_sizes of 8 000 layers.
_SMALL_ENTRY_BYTES = 1 << 16
# All extra/* entries together: the optimizer state a checkpoint carries (one
# or two copies of params) with room to spare, plus a fixed allowance for
# small things (RNG states, feature names, class labels).
_EXTRA_PARAMS_FACTOR = 4
_EXTRA_FIXED_BYTES = 1 << 22


def _temporary_file(directory):
    """(fd, path) of a new file in ``directory``, created as ``open(path, "w")`` would.

    NOTE: ``tempfile.mkstemp`` creates mode 0600 whatever the umask; creating
    with 0o666 lets the kernel apply the umask, as for any file a user writes.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".bpcore-{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory!r}")


def save(path, *, layer_sizes, activations, loss, reduction, dtype, params, extra=None):
    """Write a model file atomically (see the module docstring for the layout).

    A symbolic link at ``path`` is followed (its target is replaced, in the
    target's directory); an existing file keeps its permission bits, a new one
    gets ``0o666 & ~umask``.
    """
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(VERSION, dtype=np.int64),
        "layer_sizes": np.asarray(layer_sizes, dtype=np.int64),
        "activations": np.array(list(activations), dtype=str),
        "loss": np.array(loss),
        "reduction": np.array(reduction),
        "dtype": np.array(np.dtype(dtype).name),
        "params": np.ascontiguousarray(params),
    }
    for name, value in (extra or {}).items():
        arrays[f"extra/{name}"] = np.asarray(value)
    # The rename must replace the file the user means: through links, to the
    # final target (a dangling link gets its target created, as open() does).
    target = os.path.realpath(os.fspath(path))
    directory = os.path.dirname(target)
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        mode = None
    fd, tmp = _temporary_file(directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    """Make the rename durable where the platform allows it (POSIX); best effort."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------

class _Unreadable(Exception):
    """The bytes are not a well-formed archive of plain .npy members (the reason)."""


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def _parse_header(stream, what):
    """(shape, fortran_order, dtype) of the .npy header at ``stream``'s position.

    NOTE: NumPy parses the header with ``tokenize`` and ``ast.literal_eval``,
    which raise more than ValueError on crafted text (TokenError,
    SyntaxError, RecursionError: found by tests/test_files.py's fuzzer).
    """
    version = np.lib.format.read_magic(stream)
    if version not in _HEADER_READERS:
        raise _Unreadable(f"{what} has .npy format {version}")
    try:
        return _HEADER_READERS[version](stream)
    except (ValueError, SyntaxError, tokenize.TokenError, TypeError, RecursionError,
            OverflowError) as exc:
        raise _Unreadable(f"{what} has an unreadable .npy header ({exc})") from None


def _members(archive):
    """{entry name: ZipInfo}, every member checked before any is read."""
    members = {}
    for info in archive.infolist():
        name = info.filename
        if info.flag_bits & 0x1:
            raise _Unreadable(f"entry {name!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _Unreadable(f"entry {name!r} uses zip compression method "
                              f"{info.compress_type}; bpcore reads stored or deflated entries")
        if not name.endswith(".npy"):
            raise _Unreadable(f"entry {name!r} is not a .npy array")
        key = name[:-len(".npy")]
        if key in members:
            raise _Unreadable(f"entry {name!r} appears twice")
        members[key] = info
    return members


def _header(archive, info):
    """(shape, fortran_order, dtype, header bytes) of one member, reading its header only."""
    with archive.open(info) as member:
        shape, fortran, dtype = _parse_header(member, f"entry {info.filename!r}")
        offset = member.tell()
    if dtype.hasobject:
        raise _Unreadable(f"entry {info.filename!r} holds pickled objects")
    if any(d < 0 for d in shape):
        raise _Unreadable(f"entry {info.filename!r} has a negative shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    # NOTE: NumPy allocates what a header declares before reading any data;
    # an exact match with the member's size (np.savez writes exactly that)
    # means nothing is allocated that the member does not hold.
    if offset + nbytes != info.file_size:
        raise _Unreadable(f"entry {info.filename!r} declares {nbytes} bytes of data but "
                          f"holds {info.file_size - offset}")
    return shape, fortran, dtype, offset


def _read(archive, info, header):
    """The member's array, decompressing exactly the bytes its header declares."""
    shape, fortran, dtype, offset = header
    nbytes = info.file_size - offset
    data = bytearray(nbytes)
    view = memoryview(data)
    with archive.open(info) as member:
        member.read(offset)
        filled = 0
        while filled < nbytes:
            chunk = member.read(min(1 << 20, nbytes - filled))
            if not chunk:
                raise _Unreadable(f"entry {info.filename!r} ends early")
            view[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        # Reaching the end makes zipfile check the CRC.
        if member.read(1):
            raise _Unreadable(f"entry {info.filename!r} is longer than declared")
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape, order="F" if fortran else "C")


def _read_archive(path, archive):
    """The validated entries of an open archive (ValueError naming ``path``)."""
    members = _members(archive)
    missing = [name for name in _REQUIRED if name not in members]
    if missing:
        raise ValueError(f"{path!r} is not a bpcore model file: missing "
                         f"{', '.join(missing)}")
    unknown = [name for name in members if name not in _REQUIRED
               and not (name.startswith("extra/") and len(name) > len("extra/"))]
    if unknown:
        raise ValueError(f"{path!r} is not a bpcore model file: unexpected entries "
                         f"{', '.join(map(repr, sorted(unknown)))}")
    headers = {name: _header(archive, info) for name, info in members.items()}
    small = [name for name in _REQUIRED if name != "params"]
    for name in small:
        if members[name].file_size > _SMALL_ENTRY_BYTES:
            raise ValueError(f"{path!r}: entry {name!r} declares {members[name].file_size} "
                             f"bytes; at most {_SMALL_ENTRY_BYTES} are read")
    entries = {name: _read(archive, members[name], headers[name]) for name in small}
    if entries["format"].shape != () or str(entries["format"]) != FORMAT:
        raise ValueError(f"{path!r} is not a bpcore model file (format "
                         f"{str(entries['format'])!r}, expected {FORMAT!r})")
    version = entries["version"]
    if version.shape != () or version.dtype.kind not in "iu" or int(version) != VERSION:
        raise ValueError(f"{path!r} has model format version {version!r}; this bpcore reads "
                         f"version {VERSION}")
    dtype = str(entries["dtype"])
    if dtype not in ("float32", "float64"):
        raise ValueError(f"{path!r}: dtype must be float32 or float64; got {dtype!r}")
    sizes = entries["layer_sizes"]
    if sizes.ndim != 1 or sizes.size < 2 or sizes.dtype.kind not in "iu" or (sizes < 1).any():
        raise ValueError(f"{path!r}: layer_sizes must be >= 2 positive integers; got {sizes!r}")
    expected = int(sum(int(a) * int(b) + int(b) for a, b in zip(sizes[:-1], sizes[1:])))
    shape, _, params_dtype, _ = headers["params"]
    if params_dtype != np.dtype(dtype) or shape != (expected,):
        raise ValueError(f"{path!r}: params must be {dtype} of shape ({expected},) for layer "
                         f"sizes {sizes.tolist()}; got {params_dtype} {shape}")
    activations = entries["activations"]
    if activations.shape != (sizes.size - 1,) or activations.dtype.kind != "U":
        raise ValueError(f"{path!r}: activations must be {sizes.size - 1} names; "
                         f"got {activations!r}")
    for name in ("loss", "reduction"):
        if entries[name].shape != () or entries[name].dtype.kind != "U":
            raise ValueError(f"{path!r}: {name} must be a name; got {entries[name]!r}")
    extra_names = sorted(name for name in members if name.startswith("extra/"))
    budget = _EXTRA_PARAMS_FACTOR * expected * np.dtype(dtype).itemsize + _EXTRA_FIXED_BYTES
    declared = sum(members[name].file_size for name in extra_names)
    if declared > budget:
        largest = max(extra_names, key=lambda name: members[name].file_size)
        raise ValueError(f"{path!r}: the extra entries declare {declared} bytes (the largest, "
                         f"{largest!r}, {members[largest].file_size}); a model of {expected} "
                         f"parameters may carry at most {budget}")
    params = _read(archive, members["params"], headers["params"])
    extra = {name[len("extra/"):]: _read(archive, members[name], headers[name])
             for name in extra_names}
    return {
        "layer_sizes": [int(s) for s in sizes],
        "activations": [str(a) for a in activations],
        "loss": str(entries["loss"]),
        "reduction": str(entries["reduction"]),
        "dtype": dtype,
        "params": params,
        "extra": extra,
    }


def load(path):
    """Read and validate a model file; returns a dict of its entries (``extra`` as a dict).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is missing pieces, truncated, corrupt, not a bpcore model,
        of another format version, carries pickled objects, encrypted or
        otherwise compressed members, or declares more data than its model
        needs.  The message names the file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            if f.read(6) == b"\x93NUMPY":
                raise _Unreadable("it holds a single array, not a model archive")
            f.seek(0)
            with zipfile.ZipFile(f) as archive:
                return _read_archive(path, archive)
    except FileNotFoundError:
        raise
    except ValueError as exc:
        if str(exc).startswith(repr(path)):  # ours, already naming the file
            raise
        reason = exc
    # Anything the zip and .npy parsers raise on bad bytes: a ValueError naming the file.
    except (_Unreadable, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError,
            NotImplementedError, RuntimeError, OverflowError) as exc:
        reason = exc
    raise ValueError(f"{path!r} is not a readable bpcore model file ({reason}); it may be "
                     f"truncated, corrupt, or hold pickled objects (never loaded)") from None


# ---------------------------------------------------------------------------
# plain data files (the CLI's .npz / .npy readers), with the same checks
# ---------------------------------------------------------------------------

def read_npz(path, names):
    """The arrays ``names`` of a data ``.npz``, read as strictly as a model file.

    Only the members asked for are decompressed, each exactly as large as its
    header declares; a missing name, a foreign or malformed archive is a
    ``ValueError`` naming the file (``FileNotFoundError`` if there is none).
    """
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = _members(archive)
            absent = [name for name in names if name not in members]
            if absent:
                raise ValueError(f"{path!r} has no array named {absent[0]!r} (it holds "
                                 f"{', '.join(map(repr, sorted(members))) or 'none'})")
            return {name: _read(archive, members[name], _header(archive, members[name]))
                    for name in names}
    except FileNotFoundError:
        raise
    except ValueError as exc:
        if str(exc).startswith(repr(path)):
            raise
        reason = exc
    except (_Unreadable, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError,
            NotImplementedError, RuntimeError, OverflowError) as exc:
        reason = exc
    raise ValueError(f"{path!r} is not a readable .npz archive ({reason})") from None


def read_npy(path):
    """The array of a ``.npy`` file, which must be exactly as large as its header declares."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = _parse_header(f, "it")
            if dtype.hasobject:
                raise _Unreadable("it holds pickled objects (never loaded)")
            if any(d < 0 for d in shape):
                raise _Unreadable(f"negative shape {shape}")
            nbytes = math.prod(shape) * dtype.itemsize
            size = os.fstat(f.fileno()).st_size
            if f.tell() + nbytes != size:
                raise _Unreadable(f"its header declares {nbytes} bytes of data but it holds "
                                  f"{size - f.tell()}")
            data = bytearray(f.read(nbytes))
    except FileNotFoundError:
        raise
    except (_Unreadable, OSError, EOFError, ValueError, OverflowError) as exc:
        raise ValueError(f"{path!r} is not a readable .npy file ({exc})") from None
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
