"""bpcore's model file: one ``.npz`` archive, written atomically, read without pickle.

Contents (every entry a plain NumPy array; strings are unicode arrays, so
``np.load(..., allow_pickle=False)`` reads them):

    format        "bpcore-mlp"
    version       1
    layer_sizes   int64 (n_layers + 1,)
    activations   str (n_layers,), the last one the output activation
    loss          "mse" | "cross_entropy"
    reduction     str
    dtype         "float32" | "float64"
    params        the flat parameter block (W_0, b_0, W_1, b_1, ...)
    extra/<name>  optional arrays a caller adds (optimizer state, RNG state, epoch)

Writing goes to a temporary file in the same directory, flushed and fsynced,
then renamed over the target: a crash leaves the old file or the new one,
never half of either.
"""
import math
import os
import tempfile
import zipfile
import zlib

import numpy as np

FORMAT = "bpcore-mlp"
VERSION = 1
_REQUIRED = ("format", "version", "layer_sizes", "activations", "loss", "reduction", "dtype",
             "params")


def save(path, *, layer_sizes, activations, loss, reduction, dtype, params, extra=None):
    """Write a model file atomically (see the module docstring for the layout)."""
    path = os.fspath(path)
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
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".bpcore-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _check_headers(archive):
    """``ValueError`` unless every member's .npy header is plain data that fits the member.

    NOTE: NumPy allocates the array a header declares before reading its data,
    so a crafted header (shape (2**40,)) would be a MemoryError, or a huge
    allocation, rather than a clear error; it is checked against the member's
    real size first.
    """
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    for info in archive.zip.infolist():
        with archive.zip.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in readers:
                raise ValueError(f"entry {info.filename!r} has .npy format {version}")
            shape, _, dtype = readers[version](member)
            if dtype.hasobject:
                raise ValueError(f"entry {info.filename!r} holds pickled objects")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > info.file_size:
                raise ValueError(f"entry {info.filename!r} declares {nbytes} bytes of data "
                                 f"but holds {info.file_size}")


def load(path):
    """Read and validate a model file; returns a dict of its entries (``extra`` as a dict).

    Raises
    ------
    ValueError
        The file is missing pieces, truncated, corrupt, not a bpcore model,
        of another format version, or carries pickled objects.
    """
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
        # NOTE: a .npy file loads as a bare ndarray, which is no context manager;
        # check the type before entering `with`, so it is a ValueError like any
        # other file that is not a model archive.
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not a model archive")
        with archive:
            _check_headers(archive)
            entries = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError,
            ValueError) as exc:
        raise ValueError(f"{path!r} is not a readable bpcore model file ({exc}); it may be "
                         f"truncated, corrupt, or hold pickled objects (never loaded)") from None
    missing = [name for name in _REQUIRED if name not in entries]
    if missing:
        raise ValueError(f"{path!r} is not a bpcore model file: missing "
                         f"{', '.join(missing)}")
    if str(entries["format"]) != FORMAT:
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
    params = entries["params"]
    expected = int(sum(int(a) * int(b) + int(b) for a, b in zip(sizes[:-1], sizes[1:])))
    if params.dtype != np.dtype(dtype) or params.shape != (expected,):
        raise ValueError(f"{path!r}: params must be {dtype} of shape ({expected},) for layer "
                         f"sizes {sizes.tolist()}; got {params.dtype} {params.shape}")
    activations = entries["activations"]
    if activations.shape != (sizes.size - 1,) or activations.dtype.kind != "U":
        raise ValueError(f"{path!r}: activations must be {sizes.size - 1} names; "
                         f"got {activations!r}")
    return {
        "layer_sizes": [int(s) for s in sizes],
        "activations": [str(a) for a in activations],
        "loss": str(entries["loss"]),
        "reduction": str(entries["reduction"]),
        "dtype": dtype,
        "params": params,
        "extra": {name[len("extra/"):]: value for name, value in entries.items()
                  if name.startswith("extra/")},
    }
