"""Synchronous data-parallel training over MPI (mpi4py is imported here only).

Every rank holds a shard of the data and the same model.  One step:

1. each rank computes the loss and gradient of its local batch with the fused
   step (no update) straight into one contiguous block::

       [ grad W_0 | grad b_0 | ... | grad b_{L-1} | loss | count | non-finite | error ]

2. one ``Allreduce(MPI.IN_PLACE, block, SUM)``;
3. every rank scales the summed gradient by the global sample count and
   applies the identical update (:meth:`bpcore.MLP._apply_update`).

The result is the gradient of the mean loss over the global batch, ragged
batches weighted by their sizes, so ``N`` ranks equal one process stepping
on the concatenated batches (up to the summation order of the reduction).

Failures never hang the job from our side and are the same on every rank.
NOTE: one mechanism, everywhere a rank can fail alone.  Each phase of a
collective call -- the argument checks, reading and decoding a checkpoint,
:func:`load_shard` (and user code in :func:`agreement`), each step's local
compute, the validation loss, writing a checkpoint, the callback -- catches
``BaseException`` on this rank and keeps the first one as *pending*, and
every phase ends in a collective that every rank reaches whatever happened
locally and that carries whether a rank has one pending: the step's one
``Allreduce`` (the error flag of the block's tail), the small reductions of
the validation loss and the callback's stop flag, or an ``allgather`` where
the phase already had one (arguments, checkpoints).  If any rank flagged, one
``allgather`` of (type, message) follows and every rank raises the same
exception: the same type (one outside a known set: its nearest base in the
set, else ``RuntimeError``, with its own name in the message), the message
``"<phase>: rank <r>: <message>"`` naming the other failing ranks too, and for
``SystemExit`` the same code (the message is a note).  A KeyboardInterrupt or
SystemExit wins over an ordinary error of another rank.  The parameters are
those of the last step every rank applied.

Signal handlers: for the call's duration :func:`fit` wraps this process's
Python signal handlers (main thread, > 1 rank) so that an exception they
raise becomes pending instead of escaping between two collectives -- where
the other ranks would wait forever; the handler still runs when the signal
arrives, and its exception is raised on every rank at the next step
boundary.  Inside the user's callback it is raised in place (so a watchdog
can interrupt a slow callback) and agreed on right after.  The handlers are
restored on return; one that fires after the last agreement of the call is
raised on its own rank, as plain Python would.  A rank that *dies* is MPI's
to report: ``mpiexec`` aborts the whole job.

Run a script that uses this module as ``mpiexec -n N python -m mpi4py
script.py`` so that an exception escaping *your* code (outside :func:`fit`,
:func:`load_shard` and :func:`agreement`) on one rank aborts the job instead of
leaving the other ranks waiting in a collective.
"""
import contextlib
import copy
import json
import math
import os
import signal
import struct
import threading
import time
import zipfile
import zlib

import numpy as np

try:
    from mpi4py import MPI
except ImportError as exc:
    # NOTE: ``from None``: the one line below is the whole message.
    raise ImportError(f"bpcore.distributed needs mpi4py and an MPI library: pip install "
                      f"'bpcore[mpi]' (from a checkout: pip install '.[mpi]'; it installs "
                      f"mpi4py and mpich) ({exc})") from None

from . import _modelfile
from . import _validate as V
from .nn import NONFINITE as _NONFINITE, Progress

__all__ = ["fit", "shard", "open_array", "load_shard", "agreement", "under_mpi_launcher"]

# The block's tail after the gradients: four slots summed with them.
_TAIL = 4
_LOSS, _COUNT, _NONFINITE_FLAG, _ERROR_FLAG = range(4)


def under_mpi_launcher():
    """True when this process was started by an MPI launcher (mpiexec / mpirun / srun).

    Looks only at the environment the common launchers set (MPICH/Hydra's
    ``PMI_SIZE``, Open MPI's ``OMPI_COMM_WORLD_SIZE``, Slurm's PMI), so a
    plain ``python`` run never has to initialize MPI to find out.

    Returns
    -------
    bool
    """
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"):
        if name in os.environ:
            return True
    return False


def _comm(comm):
    return MPI.COMM_WORLD if comm is None else comm


# ---------------------------------------------------------------------------
# Sharding and memory-mapped loading
# ---------------------------------------------------------------------------

def shard(n_samples, comm=None):
    """This rank's contiguous slice of ``n_samples`` rows.

    Ranks get equal sizes up to one row: with ``q, r = divmod(n_samples,
    size)`` ranks ``0 .. r-1`` get ``q + 1`` rows and the others ``q``, in
    rank order, so the slices tile ``range(n_samples)`` exactly.

    Parameters
    ----------
    n_samples : int
        >= 0.
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``; anything with ``Get_rank()`` and
        ``Get_size()`` works.

    Returns
    -------
    slice
    """
    n_samples = V.check_int("n_samples", n_samples, minimum=0)
    comm = _comm(comm)
    rank, size = comm.Get_rank(), comm.Get_size()
    q, r = divmod(n_samples, size)
    start = rank * q + min(rank, r)
    return slice(start, start + q + (rank < r))


def _npz_member_memmap(path, key):
    """A read-only memmap of ``key`` in an .npz, or None when the member is compressed."""
    with zipfile.ZipFile(path) as archive:
        name = key if key.endswith(".npy") else key + ".npy"
        try:
            info = archive.getinfo(name)
        except KeyError:
            names = [n[:-4] if n.endswith(".npy") else n for n in archive.namelist()]
            raise KeyError(f"{path}: no array named {key!r} (has {', '.join(names)})") from None
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as f:
        # The data follow the member's local header: 30 fixed bytes, then the
        # file name and an extra field whose lengths sit at offsets 26 and 28.
        f.seek(info.header_offset)
        header = f.read(30)
        if header[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: corrupt zip member {name!r}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: {key!r} holds Python objects (never loaded)")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset,
                     order="F" if fortran else "C")


def open_array(path, key=None):
    """An array of a ``.npy`` file or ``.npz`` archive, memory-mapped read-only.

    Slicing the result reads only the rows sliced, so each rank of a job
    touches only its shard of a large file.

    Parameters
    ----------
    path : str or os.PathLike
    key : str, optional
        The array's name inside an ``.npz`` (required there, ignored for ``.npy``).

    Returns
    -------
    numpy.memmap or ndarray, the shape stored in the file
        A memmap, except for a member of a *compressed* ``.npz``
        (``np.savez_compressed``), which cannot be mapped and is read whole.
    """
    path = os.fspath(path)
    if path.endswith(".npz"):
        if key is None:
            raise ValueError("`key` names the array to open inside an .npz")
        mapped = _npz_member_memmap(path, key)
        if mapped is not None:
            return mapped
        with np.load(path, allow_pickle=False) as archive:
            return archive[key]
    return np.load(path, mmap_mode="r", allow_pickle=False)


def load_shard(path, comm=None, *, x_key="x", y_key="y", target=-1):
    """This rank's rows ``(x, y)`` of a data file, reading only those rows.

    Collective: call it on every rank.  A rank that cannot read its file
    makes every rank raise the same exception (see :func:`agreement`).

    Parameters
    ----------
    path : str or os.PathLike
        An ``.npz`` holding ``x`` (n, n_in) and ``y`` (n,) or (n, n_out)
        under ``x_key`` / ``y_key``, or an ``.npy`` table (n, n_in + 1)
        whose column ``target`` is y.
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``; the rows are :func:`shard`'s slice.
    x_key, y_key : str
    target : int
        The target column of an ``.npy`` table (default: the last).

    Returns
    -------
    x : ndarray, shape (n_local, n_in)
    y : ndarray, shape (n_local,) or (n_local, n_out)
        In-memory copies of this rank's rows.
    """
    ranks, rows = _Ranks(_comm(comm)), None
    try:
        rows = _read_shard(os.fspath(path), comm, x_key, y_key, target)
    except BaseException as exc:
        ranks.capture(exc)
    ranks.agree("bpcore.distributed.load_shard")  # the messages name each rank's own file
    return rows


def _read_shard(path, comm, x_key, y_key, target):
    if path.endswith(".npz"):
        x_all, y_all = open_array(path, x_key), open_array(path, y_key)
        if x_all.shape[:1] != y_all.shape[:1]:
            raise ValueError(f"{path}: {x_key!r} has {x_all.shape[0]} rows but {y_key!r} has "
                             f"{y_all.shape[0] if y_all.ndim else 0}")
        rows = shard(x_all.shape[0], comm)
        return np.array(x_all[rows]), np.array(y_all[rows])
    table = open_array(path)
    if table.ndim != 2 or table.shape[1] < 2:
        raise ValueError(f"{path}: expected a 2-D table with a target column; got shape "
                         f"{table.shape}")
    rows = np.array(table[shard(table.shape[0], comm)])
    col = target % table.shape[1]
    return np.delete(rows, col, axis=1), rows[:, col]


# ---------------------------------------------------------------------------
# Agreement: every rank raises the same error, or none does
# ---------------------------------------------------------------------------

# Raised as themselves on every rank.  Any other exception is raised as the
# nearest of these among its base classes (RuntimeError when none is), with
# its own type named in the message, so that every rank can build it.
_KEPT_TYPES = {cls.__name__: cls for cls in (
    ValueError, TypeError, KeyError, IndexError, AttributeError, AssertionError,
    ArithmeticError, FloatingPointError, ZeroDivisionError, OverflowError, MemoryError,
    RuntimeError, NotImplementedError, RecursionError, OSError, FileNotFoundError,
    PermissionError, TimeoutError, KeyboardInterrupt, SystemExit)}


def _report(exc, context=None):
    """A rank's exception as plain data every rank can rebuild: (type name, text, exit code)."""
    if exc is None:
        return None
    kept = next((c for c in type(exc).__mro__ if _KEPT_TYPES.get(c.__name__) is c),
                RuntimeError)
    code = None
    if isinstance(exc, SystemExit):
        code = exc.code if exc.code is None or isinstance(exc.code, (int, str)) \
            else repr(exc.code)
        text = f"SystemExit({code!r})"
    else:
        text = str(exc) or type(exc).__name__
        if type(exc) is not kept:
            text = f"{type(exc).__name__}: {text}"
    if context:
        text = f"{context}: {text}"
    return kept.__name__, text, code


def _rebuild(reports, what):
    """The one exception every rank raises for the gathered ``reports`` (None: none failed)."""
    failed = [(r, rep) for r, rep in enumerate(reports) if rep is not None]
    if not failed:
        return None
    # NOTE: an exception that is no Exception (KeyboardInterrupt, SystemExit:
    # someone asked the job to stop) wins over an ordinary failure of another
    # rank in the same phase, so that a caught ValueError never swallows it;
    # otherwise the lowest failing rank speaks.
    rank, (kind, text, code) = min(
        failed, key=lambda f: (issubclass(_KEPT_TYPES[f[1][0]], Exception), f[0]))
    others = [r for r, _ in failed if r != rank]
    also = f" (rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} failed too)" \
        if others else ""
    message = f"{what}: rank {rank}: {text}{also}"
    cls = _KEPT_TYPES[kind]
    if cls is SystemExit:
        exc = SystemExit(code)
        exc.add_note(message)
        return exc
    return cls(message)


class _Ranks:
    """This rank's side of the agreement of one collective call (see the module docstring).

    ``pending`` holds this rank's first exception not yet shared; every
    collective of the call carries whether it is set, and when any rank's is,
    :meth:`agree` gathers them all and every rank raises the same exception.
    Used as a context manager around a whole call it also defers the
    exceptions of Python signal handlers into ``pending`` (except inside
    user code, ``live``), so that none can escape between two collectives.
    """

    def __init__(self, comm):
        self.comm = comm
        self.pending, self.context = None, None
        self.live = False
        self._saved, self._wrappers = {}, {}

    def capture(self, exc, context=None):
        """Keep ``exc`` for the next agreement (the first one wins); ``context`` prefixes it."""
        if self.pending is None:
            self.pending, self.context = exc, context

    def agree(self, what, config=None, share=None):
        """Raise on every rank if any rank has a pending exception; returns the gathered ``share``.

        One ``allgather`` of short tuples.  With ``config`` (a dict of
        settings that must match) the same collective checks that every rank
        was given the same settings.
        """
        error, self.pending = self.pending, None
        gathered = self.comm.allgather((_report(error, self.context), config, share))
        agreed = _rebuild([rep for rep, _, _ in gathered], what)
        if agreed is not None:
            raise agreed from error
        if config is not None:
            for name, value in config.items():
                values = [c[name] for _, c, _ in gathered]
                if any(v != value for v in values):
                    raise ValueError(f"{what}: ranks disagree on `{name}`: {values} (every rank "
                                     f"must call with the same model and settings)")
        return [s for _, _, s in gathered]

    def reduce(self, what, values=()):
        """Sum ``values`` (floats) over the ranks, agreeing on failures in the same Allreduce."""
        buf = np.array([*values, self.pending is not None], np.float64)
        self.comm.Allreduce(MPI.IN_PLACE, buf, MPI.SUM)
        if buf[-1]:
            self.agree(what)  # raises on every rank: some rank flagged a failure
        return buf[:-1]

    def call_user(self, function, *args):
        """``function(*args)`` with signal-handler exceptions raised in place; None if it raised."""
        result = None
        try:
            self.live = True
            result = function(*args)
            self.live = False
        except BaseException as exc:
            self.live = False
            self.capture(exc)
        self.wrap_handlers()  # handlers the user installed in there are deferred too
        return result

    # -- signal handlers --------------------------------------------------------

    def _deferring(self, handler):
        def deferred(signum, frame):
            try:
                handler(signum, frame)
            except BaseException as exc:
                if self.live:
                    raise
                self.capture(exc)
        return deferred

    def wrap_handlers(self):
        """Route the exceptions of this process's Python signal handlers into ``pending``."""
        if self.comm.Get_size() == 1 or threading.current_thread() is not threading.main_thread():
            return
        done = False
        while not done:
            try:
                for sig in signal.valid_signals():
                    handler = signal.getsignal(sig)
                    if callable(handler) and handler is not self._wrappers.get(sig):
                        self._saved[sig], self._wrappers[sig] = handler, self._deferring(handler)
                        signal.signal(sig, self._wrappers[sig])
                done = True
            except BaseException as exc:  # a handler not yet wrapped fired meanwhile
                self.capture(exc)

    def __enter__(self):
        self.wrap_handlers()
        return self

    def __exit__(self, kind, exc, tb):
        for sig, wrapper in self._wrappers.items():
            if signal.getsignal(sig) is wrapper:  # else the user replaced it: theirs stays
                signal.signal(sig, self._saved[sig])
        late, self.pending = self.pending, None
        if late is not None:
            # NOTE: caught after the last agreement of this call (every rank has
            # left its collectives): raised on this rank alone, as plain Python
            # would raise it.
            raise late
        return False


@contextlib.contextmanager
def agreement(what, comm=None):
    """Run a block on every rank; an exception on any rank is raised on every rank.

    For this rank's own work before or between collective calls -- reading
    its data, say -- that can fail on some ranks only::

        with distributed.agreement("loading the data"):
            x, y = my_loader(rank)

    On leaving the block the ranks compare notes (one ``allgather``): if any
    rank's block raised, every rank raises the same exception, ``"<what>:
    rank <r>: <message>"``; otherwise every rank continues.

    Parameters
    ----------
    what : str
        Names the phase in the message.
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``; every rank of it must enter the block.
    """
    ranks = _Ranks(_comm(comm))
    try:
        yield
    except BaseException as exc:
        ranks.capture(exc)
    ranks.agree(what)


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------

def _rng_json(rng):
    return json.dumps(rng.bit_generator.state)


def _write_checkpoint(ranks, net, path, epoch, history, rng):
    """Rank 0 writes the model + epoch + optimizer and every rank's RNG state, atomically."""
    comm = ranks.comm
    states = comm.gather(_rng_json(rng), root=0)
    if comm.Get_rank() == 0:
        try:
            extra = {
                "epoch": np.int64(epoch),
                "n_ranks": np.int64(comm.Get_size()),
                "rng_states": np.array(states, dtype=str),
                "loss_history": np.array(history["loss"], dtype=np.float64),
            }
            if "val_loss" in history:
                extra["val_loss_history"] = np.array(history["val_loss"], dtype=np.float64)
            if net.velocity is not None:
                extra["velocity"] = net.velocity
            if any(net.dropout):
                # The masks' key (rank 0's: each rank's is derived from it at the
                # start of fit) and the step they have reached, so that a resumed
                # run draws the masks the uninterrupted one would have.
                extra["dropout_key"] = np.uint64(net.core.dropout_seed)
                extra["dropout_step"] = np.int64(net.core.dropout_step)
            _modelfile.save(path, layer_sizes=net.layer_sizes, activations=net.activations,
                            loss=net.loss, reduction=net.reduction, dtype=net.dtype,
                            params=net.parameters, extra=extra)
        except BaseException as exc:
            ranks.capture(exc, repr(path))  # rank 0's path: the other ranks' may differ
    ranks.agree(f"writing the checkpoint after epoch {epoch}")


def _history_entry(path, extra, name, length):
    values = extra[name]
    if values.shape != (length,) or values.dtype.kind not in "fiu":
        raise ValueError(f"{path!r}: extra/{name} must be {length} numbers (one per epoch "
                         f"done); got {values.dtype} {values.shape}")
    return [float(v) for v in values]


def _load_checkpoint(path, net, n_ranks, validation):
    """Rank 0's read of a checkpoint, every entry checked; ``ValueError`` naming the file.

    Returns (payload for every rank, params, velocity or None); nothing is
    applied to ``net`` here.
    """
    entries = _modelfile.load(path)
    mine = (net.layer_sizes, net.activations, net.loss, net.reduction, net.dtype.name)
    theirs = (entries["layer_sizes"], entries["activations"], entries["loss"],
              entries["reduction"], entries["dtype"])
    if mine != theirs:
        raise ValueError(f"{path!r} holds a different model: {theirs} vs {mine}")
    extra = entries["extra"]
    missing = [k for k in ("epoch", "n_ranks", "rng_states", "loss_history") if k not in extra]
    if missing:
        raise ValueError(f"{path!r} is a model file, not a checkpoint (no "
                         f"{', '.join(missing)})")
    for name in ("epoch", "n_ranks"):
        if extra[name].shape != () or extra[name].dtype.kind not in "iu" or extra[name] < 0:
            raise ValueError(f"{path!r}: extra/{name} must be an integer >= 0; got "
                             f"{extra[name]!r}")
    if int(extra["n_ranks"]) != n_ranks:
        raise ValueError(f"{path!r} was written by {int(extra['n_ranks'])} ranks; "
                         f"resuming bitwise needs the same count, got {n_ranks}")
    epoch = int(extra["epoch"])
    states = extra["rng_states"]
    if states.shape != (n_ranks,) or states.dtype.kind != "U":
        raise ValueError(f"{path!r}: extra/rng_states must be {n_ranks} strings, one per "
                         f"rank; got {states.dtype} {states.shape}")
    rng = []
    for r, text in enumerate(states):
        try:
            state = json.loads(str(text))
        except ValueError as exc:
            raise ValueError(f"{path!r}: extra/rng_states[{r}] is not valid JSON ({exc})") \
                from None
        if not isinstance(state, dict):
            raise ValueError(f"{path!r}: extra/rng_states[{r}] must be a JSON object (a bit "
                             f"generator's state); got {type(state).__name__}")
        rng.append(state)
    payload = {"path": path, "epoch": epoch, "rng": rng,
               "loss": _history_entry(path, extra, "loss_history", epoch), "val_loss": None}
    if validation:
        if "val_loss_history" not in extra:
            raise ValueError(f"{path!r} holds no validation history (extra/val_loss_history) "
                             f"but `validation_data` is given")
        payload["val_loss"] = _history_entry(path, extra, "val_loss_history", epoch)
    velocity = extra.get("velocity")
    if velocity is not None and (velocity.shape != (net.n_params,)
                                 or velocity.dtype != net.dtype):
        raise ValueError(f"{path!r}: extra/velocity must be {net.dtype} of shape "
                         f"({net.n_params},) like the parameters; got {velocity.dtype} "
                         f"{velocity.shape}")
    payload["velocity"] = velocity is not None
    payload["dropout"] = None
    if "dropout_key" in extra or "dropout_step" in extra:
        for name in ("dropout_key", "dropout_step"):
            value = extra.get(name)
            if value is None or value.shape != () or value.dtype.kind not in "iu" or value < 0:
                raise ValueError(f"{path!r}: extra/dropout_key and extra/dropout_step must "
                                 f"both be integers >= 0; got extra/{name} = {value!r}")
        payload["dropout"] = (int(extra["dropout_key"]) % (1 << 64), int(extra["dropout_step"]))
    return payload, entries["params"], velocity


def _read_checkpoint(ranks, net, path, rng, validation):
    """Resume from ``path`` (read by rank 0); returns (epoch, history).

    Every rank's part is checked -- the file on rank 0, each rank's RNG state
    on that rank -- and agreed on before anything is changed: a bad
    checkpoint leaves every rank's model and generator as they were.
    """
    comm = ranks.comm
    rank = comm.Get_rank()
    what = "resuming from a checkpoint"  # the messages name rank 0's path
    payload, params, velocity = None, None, None
    if rank == 0:
        try:
            payload, params, velocity = _load_checkpoint(path, net, comm.Get_size(),
                                                         validation)
        except BaseException as exc:
            ranks.capture(exc)
    ranks.agree(what)
    payload = comm.bcast(payload, root=0)
    trial = None
    try:
        trial = copy.deepcopy(rng.bit_generator)
        trial.state = payload["rng"][rank]
    except Exception as exc:
        ranks.capture(ValueError(
            f"{payload['path']!r}: extra/rng_states[{rank}] is not a state of this rank's "
            f"{type(rng.bit_generator).__name__} generator ({type(exc).__name__}: {exc})"))
    except BaseException as exc:
        ranks.capture(exc)
    ranks.agree(what)
    rng.bit_generator.state = trial.state
    if rank == 0:
        net.parameters[...] = params
        if velocity is not None:
            net.velocity = velocity
    # NOTE: a checkpoint without the dropout state (written by a model without
    # dropout) leaves the model's own key and step: the run goes on, not bitwise.
    if payload["dropout"] is not None and any(net.dropout):
        key, step = payload["dropout"]
        if rank == 0:
            net.core.dropout_seed = key  # fit derives every rank's key from rank 0's
        net.core.dropout_step = step
    _bcast_velocity(comm, net, payload["velocity"])
    history = {"loss": payload["loss"]}
    if payload["val_loss"] is not None:
        history["val_loss"] = payload["val_loss"]
    return payload["epoch"], history


# ---------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------

def _rank_rng(seed, comm):
    """This rank's shuffling generator.

    Rank 0 draws from ``np.random.default_rng(seed)`` -- the stream
    ``MLP.fit(seed=seed)`` uses -- and rank r > 0 from the r-th child of the
    same ``SeedSequence``, so one seed gives every rank its own,
    reproducible order.  ``seed=None`` takes fresh entropy on rank 0 and
    broadcasts it.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        seed = comm.bcast(np.random.SeedSequence().entropy if comm.Get_rank() == 0 else None,
                          root=0)
    root = np.random.SeedSequence(seed)
    rank = comm.Get_rank()
    if rank == 0:
        return np.random.default_rng(root)
    return np.random.default_rng(np.random.SeedSequence(root.entropy, spawn_key=(rank,)))


def _param_hash(net):
    crc = zlib.crc32(net.parameters.view(np.uint8))
    if net.velocity is not None:
        crc = zlib.crc32(net.velocity.view(np.uint8), crc)
    return crc


class _Stepper:
    """The per-step work of one rank: local gradients into the block, the reduction, the update."""

    def __init__(self, net, ranks, x, y, *, batch_size, accumulate_steps, overlap, hyper):
        self.net, self.ranks, self.comm, self.x, self.y = net, ranks, ranks.comm, x, y
        self.core = net.core
        self.size = self.comm.Get_size()
        self.n_params = net.n_params
        self.batch_size, self.k = batch_size, accumulate_steps
        self.lr, self.momentum, self.weight_decay, self.nesterov = hyper
        self.mean = net.reduction.endswith("mean")
        # NOTE: one rank with one micro-batch needs no scaling, and skipping
        # it keeps the 1-rank path bitwise equal to MLP.fit (g * n / n is not
        # always g in floating point).
        self.scaled = self.mean and not (self.size == 1 and self.k == 1)
        self.block = np.zeros(self.n_params + _TAIL, net.dtype)
        self.grads = self.block[:self.n_params]
        self.tail = self.block[self.n_params:]
        self.scratch = np.zeros(self.n_params, net.dtype) if self.k > 1 else None
        self.x_buf = np.empty((batch_size, x.shape[1]), x.dtype)
        self.y_buf = np.empty((batch_size,) + y.shape[1:], y.dtype)
        self.overlap = overlap
        if overlap:
            w_off, _ = self.core.offsets()
            bounds = [int(o) for o in w_off] + [self.n_params]
            # Layer l's bucket: W_l and b_l, contiguous in the block.
            self.buckets = [self.block[bounds[l]:bounds[l + 1]] for l in range(len(w_off))]
        self.comm_seconds = 0.0

    def _rows(self, order, start, stop):
        """The micro-batch of local rows start:stop in ``order`` (None: in place)."""
        if order is None:
            return self.x[start:stop], self.y[start:stop]
        idx = order[start:stop]
        rows = stop - start
        xb, yb = self.x_buf[:rows], self.y_buf[:rows]
        np.take(self.x, idx, axis=0, out=xb)
        np.take(self.y, idx, axis=0, out=yb)
        return xb, yb

    def _local(self, order, first_micro):
        """Sum this rank's k micro-batches into the block; returns (loss, count, status)."""
        n_local = self.x.shape[0]
        loss_local, count, first = 0.0, 0, True
        for j in range(first_micro, first_micro + self.k):
            start = j * self.batch_size
            stop = min(start + self.batch_size, n_local)
            if start >= stop:
                break
            xb, yb = self._rows(order, start, stop)
            rows = stop - start
            target = self.block if first else self.scratch
            status, loss = self.core.loss_and_grad(self.net.parameters, xb, yb, target)
            if status == _NONFINITE:
                return loss, count + rows, _NONFINITE
            g = target[:self.n_params]
            if self.scaled:
                np.multiply(g, rows, out=g)
            if not first:
                np.add(self.grads, g, out=self.grads)
            loss_local += loss * rows if self.mean else loss
            count += rows
            first = False
        if first:  # no rows left on this rank: contribute zeros
            self.grads.fill(0)
        return loss_local, count, 0

    def _local_overlapped(self, order, first_micro):
        """One micro-batch, starting each layer's reduction as soon as its gradient is done.

        Every rank issues the same requests in the same order whatever
        happens locally (collectives must match), so a failing rank still
        reduces its (garbage or zero) buckets and reports through the tail.
        """
        ranks = self.ranks
        n_local = self.x.shape[0]
        start = first_micro * self.batch_size
        rows = max(min(start + self.batch_size, n_local) - start, 0)
        status, loss, requests = 0, 0.0, []
        try:
            if rows:
                xb, yb = self._rows(order, start, start + rows)
                status, loss = self.core.loss_and_grad_begin(self.net.parameters, xb, yb)
            else:
                self.grads.fill(0)
        except BaseException as exc:
            ranks.capture(exc)
        for l in range(len(self.buckets) - 1, -1, -1):
            if rows and status == 0 and ranks.pending is None:
                try:
                    status = self.core.backward_layer(self.net.parameters, xb, self.block, l)
                    if self.scaled and status == 0:
                        np.multiply(self.buckets[l], rows, out=self.buckets[l])
                except BaseException as exc:
                    ranks.capture(exc)
            started = time.perf_counter()
            requests.append(self.comm.Iallreduce(MPI.IN_PLACE, self.buckets[l], MPI.SUM))
            MPI.Request.Testall(requests)  # let MPI progress the buckets already started
            self.comm_seconds += time.perf_counter() - started
        loss_local = (loss * rows if self.mean else loss) if rows else 0.0
        return loss_local, rows, status, requests

    def step(self, order, first_micro, where):
        """One synchronous update; raises on every rank if any rank failed.

        A rank with a pending exception (an earlier phase's, or a signal
        handler's) skips its work and only raises the flag: the step is where
        the ranks agree on it.
        """
        ranks = self.ranks
        requests, loss_local, count, status = (), 0.0, 0, 0
        if self.overlap:
            loss_local, count, status, requests = self._local_overlapped(order, first_micro)
        elif ranks.pending is None:
            try:
                loss_local, count, status = self._local(order, first_micro)
            except BaseException as exc:  # reported through the block, raised on every rank below
                ranks.capture(exc)
        if self.size == 1:
            total_loss, total_count = loss_local, count
            failed = status != 0 or ranks.pending is not None
        else:
            tail = self.tail
            tail[_LOSS] = loss_local
            tail[_COUNT] = count
            tail[_NONFINITE_FLAG] = status == _NONFINITE
            tail[_ERROR_FLAG] = ranks.pending is not None or status not in (0, _NONFINITE)
            started = time.perf_counter()
            if self.overlap:
                requests.append(self.comm.Iallreduce(MPI.IN_PLACE, tail, MPI.SUM))
                MPI.Request.Waitall(requests)
            else:
                self.comm.Allreduce(MPI.IN_PLACE, self.block, MPI.SUM)
            self.comm_seconds += time.perf_counter() - started
            total_loss, total_count = float(tail[_LOSS]), int(round(float(tail[_COUNT])))
            failed = tail[_NONFINITE_FLAG] != 0 or tail[_ERROR_FLAG] != 0
        if failed:
            if ranks.pending is None and status == _NONFINITE:
                ranks.capture(FloatingPointError(
                    f"non-finite loss or gradient (local loss = {loss_local}); the parameters "
                    f"are those from before this step -- try a smaller `lr` or check this "
                    f"rank's data"))
            elif ranks.pending is None and status != 0:
                ranks.capture(RuntimeError(f"status {status}"))
            ranks.agree(where)
        if self.scaled:
            np.divide(self.grads, total_count, out=self.grads)
        self.net.apply_update(self.block, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay, nesterov=self.nesterov)
        return (total_loss if self.mean else total_loss * total_count), total_count


def fit(net, x, y, *, comm=None, epochs, batch_size, lr, momentum=0.0, weight_decay=0.0,
        nesterov=False, shuffle=True, seed=None, validation_data=None, progress=False,
        callback=None, checkpoint=None, checkpoint_every=1, resume=None, accumulate_steps=1,
        overlap=False, verify=False):
    """Synchronous data-parallel mini-batch SGD: :meth:`bpcore.MLP.fit` over MPI ranks.

    Call it on every rank with the same model and settings and this rank's
    shard of the data.  Rank 0's parameters (and momentum buffer) are
    broadcast first; after that every rank applies the same update, so the
    models stay identical.

    Parameters
    ----------
    net : bpcore.MLP
        The model (the same architecture on every rank).
    x : array_like, shape (n_local, n_in)
        This rank's rows (see :func:`shard` and :func:`load_shard`); ranks
        may hold different counts, even zero.
    y : array_like, shape (n_local, n_out), or int labels (n_local,)
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``.
    epochs : int
        Total epochs (>= 0), counting those done before a ``resume``.
    batch_size : int
        Rows per rank per micro-batch: one step's global batch is the union of
        every rank's ``accumulate_steps`` next micro-batches.
    lr, momentum, weight_decay, nesterov
        As :meth:`bpcore.MLP.train_step`.
    shuffle : bool
        Each rank visits its rows in a new random order each epoch.
    seed : int or numpy.random.Generator, optional
        Seeds the shuffles: rank 0 uses ``default_rng(seed)`` (the stream of
        ``MLP.fit(seed=seed)``), rank r > 0 the r-th child of the same
        ``SeedSequence``.  Same seed and rank count: bitwise the same model.
    validation_data : (x_val, y_val), optional
        This rank's validation rows; the loss over all ranks' rows is
        recorded as ``history["val_loss"]``.
    progress : bool
        A progress bar on rank 0.
    callback : callable, optional
        ``callback(epoch, logs)`` on every rank after every epoch (the same
        global logs everywhere); False from any rank stops every rank.
    checkpoint : str or os.PathLike, optional
        Rank 0 writes the model (``.npz``, atomically) with the epoch, the
        momentum buffer, every rank's RNG state and the loss history.
    checkpoint_every : int
        Write the checkpoint after every this many epochs (>= 1).
    resume : str or os.PathLike, optional
        A checkpoint to continue from (written with the same rank count):
        training picks up after its epoch and reproduces the uninterrupted
        run bitwise, given the same arguments (the checkpoint holds the
        model, the optimizer state, every rank's shuffling generator and,
        with dropout, the masks' key and step).
    accumulate_steps : int
        Micro-batches each rank sums before the one reduction of a step
        (>= 1): k times fewer reductions, k times larger global batch.
    overlap : bool
        Reduce each layer's gradient with ``Iallreduce`` as soon as the
        backward pass has produced it (compiled backend, ``accumulate_steps
        = 1``).  Same numbers as the single call; see the README for when it
        pays.
    verify : bool
        Compare a hash of the parameters (and momentum) across ranks after
        every epoch; a mismatch raises ``RuntimeError`` on every rank.

    Returns
    -------
    dict
        ``{"loss": [...], "val_loss": [...], "comm_seconds": [...]}``: per
        epoch, the global batch losses averaged with batch-size weights (as
        :meth:`MLP.fit`), and the seconds this rank spent in reductions.

    Raises
    ------
    FloatingPointError
        On every rank, when any rank's batch gave a non-finite loss or
        gradient; the message names the epoch, the step and the rank; the
        parameters are those from before that step.
    ValueError, TypeError
        On every rank, when any rank's arguments are invalid, the ranks'
        settings differ, or the ``resume`` checkpoint is unreadable or
        inconsistent (the message names the file).
    BaseException
        Whatever fails on any rank -- the step, the callback, writing the
        checkpoint, a signal handler's ``KeyboardInterrupt``/``SystemExit``/
        ``TimeoutError`` -- is raised on every rank at the same phase: the same
        type, message and ``SystemExit`` code (see the module docstring); the
        parameters are those of the last step every rank applied.
    """
    comm = _comm(comm)
    with _Ranks(comm) as ranks:
        return _fit(ranks, net, x, y, epochs=epochs, batch_size=batch_size, lr=lr,
                    momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                    shuffle=shuffle, seed=seed, validation_data=validation_data,
                    progress=progress, callback=callback, checkpoint=checkpoint,
                    checkpoint_every=checkpoint_every, resume=resume,
                    accumulate_steps=accumulate_steps, overlap=overlap, verify=verify)


def _path(name, value):
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a path (str or os.PathLike) or None; got "
                        f"{type(value).__name__}")
    return value if value is None else os.fspath(value)


def _fit(ranks, net, x, y, *, epochs, batch_size, lr, momentum, weight_decay, nesterov,
         shuffle, seed, validation_data, progress, callback, checkpoint, checkpoint_every,
         resume, accumulate_steps, overlap, verify):
    """:func:`fit` inside its agreement (``ranks``); every phase ends in a collective."""
    comm = ranks.comm
    rank, size = comm.Get_rank(), comm.Get_size()
    config = None
    try:
        x, y = net.prepare_inputs(x, y, min_rows=0)
        epochs = V.check_int("epochs", epochs, minimum=0)
        batch_size = V.check_int("batch_size", batch_size, minimum=1)
        accumulate_steps = V.check_int("accumulate_steps", accumulate_steps, minimum=1)
        checkpoint_every = V.check_int("checkpoint_every", checkpoint_every, minimum=1)
        checkpoint, resume = _path("checkpoint", checkpoint), _path("resume", resume)
        hyper = net.check_sgd(lr, momentum, weight_decay, nesterov)
        if overlap and not hasattr(net.core, "backward_layer"):
            raise ValueError("`overlap`=True needs the compiled backend")
        if overlap and accumulate_steps != 1:
            raise ValueError("`overlap`=True needs `accumulate_steps`=1")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("`validation_data` must be a pair (x_val, y_val)")
            x_val, y_val = net.prepare_inputs(*validation_data, min_rows=0)
        if callback is not None and not callable(callback):
            raise TypeError("`callback` must be callable(epoch, logs)")
        if seed is not None and not isinstance(seed, np.random.Generator):
            seed = V.check_int("seed", seed, minimum=0, maximum=None)  # as MLP.fit
        config = {
            "layer_sizes": net.layer_sizes, "activations": net.activations, "loss": net.loss,
            "activation_options": net.activation_options, "loss_options": net.loss_options,
            "dropout": net.dropout,
            "reduction": net.reduction, "dtype": net.dtype.name, "epochs": epochs,
            "batch_size": batch_size, "hyper": hyper, "shuffle": bool(shuffle),
            "accumulate_steps": accumulate_steps, "overlap": bool(overlap),
            "verify": bool(verify), "validation": validation_data is not None,
            "checkpoint": checkpoint is not None, "checkpoint_every": checkpoint_every,
            "resume": resume is not None, "callback": callback is not None,
            "seed": seed if isinstance(seed, int) else None}
    except BaseException as exc:
        ranks.capture(exc)
    counts = ranks.agree("bpcore.distributed.fit arguments", config, share=x.shape[0]
                         if ranks.pending is None else 0)
    n_global = sum(counts)
    if n_global == 0:
        raise ValueError("`x` has no rows on any rank")
    micro = max(math.ceil(c / batch_size) for c in counts)
    steps = math.ceil(micro / accumulate_steps)

    with net.lock:
        stepper = None
        try:
            rng = _rank_rng(seed, comm)
            stepper = _Stepper(net, ranks, x, y, batch_size=batch_size,
                               accumulate_steps=accumulate_steps, overlap=bool(overlap),
                               hyper=hyper)
        except BaseException as exc:
            ranks.capture(exc)
        ranks.agree("bpcore.distributed.fit setup")
        first_epoch, history = 0, {"loss": []}
        if validation_data is not None:
            history["val_loss"] = []
        if resume is not None:
            first_epoch, history = _read_checkpoint(ranks, net, resume, rng,
                                                    validation_data is not None)
        else:
            # Every rank starts from rank 0's model and optimizer state.
            _bcast_velocity(comm, net, comm.bcast(net.velocity is not None, root=0))
        comm.Bcast(net.parameters, root=0)
        if any(net.dropout):
            # NOTE: rank 0's dropout key, moved by the rank: every rank draws masks of
            # its own (the same key would drop the same units of each rank's batch),
            # reproducibly; one rank keeps the model's key.
            base = comm.bcast(net.core.dropout_seed, root=0)
            net.core.dropout_seed = (base + rank * _DROPOUT_STRIDE) % (1 << 64)
        history["comm_seconds"] = []
        # NOTE: one rank with nothing to accumulate or overlap has nothing to
        # reduce: the compiled epoch loop of MLP.fit runs it (one nogil call per
        # epoch instead of a Python-level step), which is the very same
        # arithmetic -- the per-step path is bitwise equal to it too, see
        # tests/test_distributed.py -- without ~5% of per-step overhead on
        # small networks.
        epoch_loop = (size == 1 and accumulate_steps == 1 and not overlap
                      and _EPOCH_LOOP_AT_ONE_RANK)
        bar = Progress(epochs - first_epoch, bool(progress) and rank == 0)
        grads = np.zeros(net.n_params, net.dtype) if epoch_loop else None  # one per fit
        try:
            for epoch in range(first_epoch, epochs):
                order = rng.permutation(x.shape[0]).astype(np.int64) if shuffle else None
                loss_sum = 0.0
                stepper.comm_seconds = 0.0
                if epoch_loop:
                    loss_sum = _one_rank_epoch(net, x, y, order, batch_size, hyper, epoch,
                                               grads)
                else:
                    for step in range(steps):
                        batch_loss, _ = stepper.step(
                            order, step * accumulate_steps, f"epoch {epoch}, step {step}")
                        loss_sum += batch_loss
                logs = {"loss": loss_sum / n_global}
                history["loss"].append(logs["loss"])
                history["comm_seconds"].append(stepper.comm_seconds)
                if validation_data is not None:
                    logs["val_loss"] = _global_loss(ranks, net, x_val, y_val,
                                                    f"validation after epoch {epoch}")
                    history["val_loss"].append(logs["val_loss"])
                if verify:
                    hashes = ranks.agree(f"verify after epoch {epoch}", share=_param_hash(net))
                    if len(set(hashes)) != 1:
                        raise RuntimeError(f"the ranks' parameters differ after epoch {epoch} "
                                           f"(hashes {hashes})")
                if checkpoint is not None and (epoch + 1) % checkpoint_every == 0:
                    _write_checkpoint(ranks, net, checkpoint, epoch + 1, history, rng)
                try:
                    bar.update(logs)
                except BaseException as exc:  # agreed on at the next collective
                    ranks.capture(exc)
                if callback is not None:
                    stop = ranks.call_user(callback, epoch, dict(logs)) is False
                    if ranks.reduce(f"callback after epoch {epoch}", (stop,))[0]:
                        break
            # The last agreement: a signal handler's exception caught since the
            # last collective is raised on every rank here, not on its own.
            ranks.agree("bpcore.distributed.fit")
        finally:
            bar.close()
    return history


_EPOCH_LOOP_AT_ONE_RANK = True  # False: run the per-step path at one rank too (tests, bench)


def _bcast_velocity(comm, net, present):
    """Every rank takes rank 0's momentum buffer (``present``: rank 0 has one)."""
    if not present:
        net.velocity = None
        return
    if net.velocity is None:
        net.velocity = np.zeros(net.n_params, net.dtype)
    comm.Bcast(net.velocity, root=0)


# splitmix64's increment: consecutive ranks' dropout keys far apart
_DROPOUT_STRIDE = 0x9E3779B97F4A7C15


def _one_rank_epoch(net, x, y, order, batch_size, hyper, epoch, grads):
    """One epoch on a single rank through the compiled loop; returns the loss sum.

    ``grads`` is the fit's gradient block (n_params,), reused by every epoch.
    """
    lr, momentum, weight_decay, nesterov = hyper
    rule, state = net.update_rule("sgd", lr=lr, momentum=momentum, weight_decay=weight_decay,
                                  nesterov=nesterov)
    status, loss_sum, done = net.core.epoch(net.parameters, grads, state, x, y, None, order,
                                            batch_size, rule)
    if status == _NONFINITE:
        raise FloatingPointError(
            f"epoch {epoch}, step {done}: rank 0: non-finite loss or gradient; the "
            f"parameters are those from before this step -- try a smaller `lr`")
    if status:  # NOTE: a signal handler's exception propagates from epoch itself
        raise RuntimeError(f"epoch {epoch}, step {done}: rank 0: status {status}")
    return loss_sum


def _global_loss(ranks, net, x, y, what):
    """The loss over every rank's (x, y) rows, as if they were one array."""
    n, loss = x.shape[0], 0.0
    mean = net.reduction.endswith("mean")
    try:
        if n:
            loss = float(net.core.evaluate(net.parameters, x, y))
    except BaseException as exc:
        ranks.capture(exc)
    total, count = ranks.reduce(what, (loss * n if mean else loss, n))
    return total / count if mean else total
