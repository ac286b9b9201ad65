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

Faults never hang the job from our side: a rank whose batch gives a
non-finite loss, or whose step raises, sets a flag in the same reduction,
and every rank then raises the same error at the same step with the
parameters untouched.  Disagreements found before training (bad arguments,
mismatched models, unreadable checkpoints) are agreed on the same way.  A
rank that *dies* is MPI's to report: ``mpiexec`` aborts the whole job.

Run a script that uses this module as ``mpiexec -n N python -m mpi4py
script.py`` so that an exception escaping *your* code on one rank aborts the
job instead of leaving the other ranks waiting in a collective.
"""
import json
import math
import os
import struct
import time
import zipfile
import zlib

import numpy as np

try:
    from mpi4py import MPI
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("bpcore.distributed needs mpi4py and an MPI library: "
                      "pip install 'bpcore[mpi]' (mpi4py + mpich)") from exc

from . import _modelfile
from . import _validate as V
from .nn import _NONFINITE, _Progress

__all__ = ["fit", "shard", "open_array", "load_shard", "under_mpi_launcher"]

# The block's tail after the gradients: four slots summed with them.
_TAIL = 4
_LOSS, _COUNT, _NONFINITE_FLAG, _ERROR_FLAG = range(4)
_ERROR_TYPES = {cls.__name__: cls for cls in (FloatingPointError, ValueError, TypeError,
                                              RuntimeError, MemoryError, FileNotFoundError)}


def under_mpi_launcher():
    """True when this process was started by an MPI launcher (mpiexec / mpirun / srun).

    Looks only at the environment the common launchers set (MPICH/Hydra's
    ``PMI_SIZE``, Open MPI's ``OMPI_COMM_WORLD_SIZE``, Slurm's PMI), so a
    plain ``python`` run never has to initialize MPI to find out.
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
    numpy.memmap or ndarray
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
    path = os.fspath(path)
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

def _agree(comm, error, what, config=None):
    """Raise on every rank if ``error`` (this rank's exception or None) is set on any.

    One ``allgather`` of short strings; the rank that failed re-raises its own
    exception type with the common message, chained to the original.  With
    ``config`` (a dict of settings that must match), the same collective
    also checks that every rank was given the same settings.
    """
    mine = None if error is None else (type(error).__name__, str(error))
    reports = comm.allgather((mine, config))
    failed = [(r, rep) for r, (rep, _) in enumerate(reports) if rep is not None]
    if failed:
        rank, (kind, text) = failed[0]
        more = f" (and {len(failed) - 1} more rank(s))" if len(failed) > 1 else ""
        raise _ERROR_TYPES.get(kind, RuntimeError)(f"{what}: rank {rank}{more}: {text}") \
            from error
    if config is not None:
        for name, value in config.items():
            values = [c[name] for _, c in reports]
            if any(v != value for v in values):
                raise ValueError(f"{what}: ranks disagree on `{name}`: {values} (every rank "
                                 f"must call with the same model and settings)")


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------

def _rng_json(rng):
    return json.dumps(rng.bit_generator.state)


def _write_checkpoint(comm, net, path, epoch, history, rng):
    """Rank 0 writes the model + epoch + optimizer and every rank's RNG state, atomically."""
    states = comm.gather(_rng_json(rng), root=0)
    error = None
    if comm.Get_rank() == 0:
        extra = {
            "epoch": np.int64(epoch),
            "n_ranks": np.int64(comm.Get_size()),
            "rng_states": np.array(states, dtype=str),
            "loss_history": np.array(history["loss"], dtype=np.float64),
        }
        if "val_loss" in history:
            extra["val_loss_history"] = np.array(history["val_loss"], dtype=np.float64)
        if net._velocity is not None:
            extra["velocity"] = net._velocity
        try:
            _modelfile.save(path, layer_sizes=net.layer_sizes, activations=net.activations,
                            loss=net.loss, reduction=net.reduction, dtype=net.dtype,
                            params=net._params, extra=extra)
        except OSError as exc:
            error = RuntimeError(f"could not write the checkpoint {path!r}: {exc}")
    _agree(comm, error, f"checkpoint after epoch {epoch}")


def _read_checkpoint(comm, net, path):
    """Rank 0 reads ``path``; returns (epoch, history, this rank's RNG state), params/velocity set."""
    rank, size = comm.Get_rank(), comm.Get_size()
    error, payload = None, None
    if rank == 0:
        try:
            entries = _modelfile.load(path)
            mine = (net.layer_sizes, net.activations, net.loss, net.reduction, net.dtype.name)
            theirs = (entries["layer_sizes"], entries["activations"], entries["loss"],
                      entries["reduction"], entries["dtype"])
            if mine != theirs:
                raise ValueError(f"{path!r} holds a different model: {theirs} vs {mine}")
            extra = entries["extra"]
            missing = [k for k in ("epoch", "n_ranks", "rng_states", "loss_history")
                       if k not in extra]
            if missing:
                raise ValueError(f"{path!r} is a model file, not a checkpoint (no "
                                 f"{', '.join(missing)})")
            if int(extra["n_ranks"]) != size:
                raise ValueError(f"{path!r} was written by {int(extra['n_ranks'])} ranks; "
                                 f"resuming bitwise needs the same count, got {size}")
            net._params[...] = entries["params"]
            velocity = extra.get("velocity")
            payload = {
                "epoch": int(extra["epoch"]),
                "loss": [float(v) for v in extra["loss_history"]],
                "val_loss": ([float(v) for v in extra["val_loss_history"]]
                             if "val_loss_history" in extra else None),
                "velocity": velocity is not None,
                "rng": [str(s) for s in extra["rng_states"]],
            }
            if velocity is not None:
                net._velocity_block(1.0)[...] = velocity
        except (OSError, ValueError) as exc:
            error = exc
    _agree(comm, error, f"resuming from {path!r}")
    payload = comm.bcast(payload, root=0)
    if payload["velocity"]:
        comm.Bcast(net._velocity_block(1.0), root=0)
    else:
        net._velocity = None
    rng_state = json.loads(payload["rng"][rank])
    history = {"loss": payload["loss"]}
    if payload["val_loss"] is not None:
        history["val_loss"] = payload["val_loss"]
    return payload["epoch"], history, rng_state


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
    crc = zlib.crc32(net._params.view(np.uint8))
    if net._velocity is not None:
        crc = zlib.crc32(net._velocity.view(np.uint8), crc)
    return crc


class _Stepper:
    """The per-step work of one rank: local gradients into the block, the reduction, the update."""

    def __init__(self, net, comm, x, y, *, batch_size, accumulate_steps, overlap, hyper):
        self.net, self.comm, self.x, self.y = net, comm, x, y
        self.core = net._core
        self.size = comm.Get_size()
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
        """Sum this rank's k micro-batches into the block; returns (loss, count, status, error)."""
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
            status, loss = self.core.loss_and_grad(self.net._params, xb, yb, target)
            if status == _NONFINITE:
                return loss, count + rows, _NONFINITE, None
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
        return loss_local, count, 0, None

    def _local_overlapped(self, order, first_micro):
        """One micro-batch, starting each layer's reduction as soon as its gradient is done.

        Every rank issues the same requests in the same order whatever
        happens locally (collectives must match), so a failing rank still
        reduces its (garbage or zero) buckets and reports through the tail.
        """
        n_local = self.x.shape[0]
        start = first_micro * self.batch_size
        rows = max(min(start + self.batch_size, n_local) - start, 0)
        status, loss, error, requests = 0, 0.0, None, []
        try:
            if rows:
                xb, yb = self._rows(order, start, start + rows)
                status, loss = self.core.loss_and_grad_begin(self.net._params, xb, yb)
            else:
                self.grads.fill(0)
        except Exception as exc:
            error = exc
        for l in range(len(self.buckets) - 1, -1, -1):
            if rows and status == 0 and error is None:
                try:
                    status = self.core.backward_layer(self.net._params, xb, self.block, l)
                    if self.scaled and status == 0:
                        np.multiply(self.buckets[l], rows, out=self.buckets[l])
                except Exception as exc:
                    error = exc
            started = time.perf_counter()
            requests.append(self.comm.Iallreduce(MPI.IN_PLACE, self.buckets[l], MPI.SUM))
            MPI.Request.Testall(requests)  # let MPI progress the buckets already started
            self.comm_seconds += time.perf_counter() - started
        loss_local = (loss * rows if self.mean else loss) if rows else 0.0
        return loss_local, rows, status, error, requests

    def step(self, order, first_micro, where):
        """One synchronous update; raises on every rank if any rank failed."""
        requests = ()
        error = None
        try:
            if self.overlap:
                loss_local, count, status, error, requests = self._local_overlapped(
                    order, first_micro)
            else:
                loss_local, count, status, error = self._local(order, first_micro)
        except Exception as exc:  # reported through the block, raised on every rank below
            loss_local, count, status, error = 0.0, 0, 0, exc
        if self.size == 1:
            total_loss, total_count = loss_local, count
            failed = status != 0 or error is not None
        else:
            tail = self.tail
            tail[_LOSS] = loss_local
            tail[_COUNT] = count
            tail[_NONFINITE_FLAG] = status == _NONFINITE
            tail[_ERROR_FLAG] = error is not None or status not in (0, _NONFINITE)
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
            self._raise(status, error, loss_local, where)
        if self.scaled:
            np.divide(self.grads, total_count, out=self.grads)
        self.net._apply_update(self.block, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay, nesterov=self.nesterov)
        return (total_loss if self.mean else total_loss * total_count), total_count

    def _raise(self, status, error, loss, where):
        if error is None and status == _NONFINITE:
            error = FloatingPointError(f"non-finite loss or gradient (local loss = {loss}); "
                                       f"the parameters are those from before this step -- "
                                       f"try a smaller `lr` or check this rank's data")
        elif error is None and status != 0:
            error = RuntimeError(f"status {status}")
        _agree(self.comm, error, where)


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
        run bitwise, given the same arguments.
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
        On every rank, when any rank's arguments are invalid or the ranks'
        settings differ.
    """
    comm = _comm(comm)
    rank, size = comm.Get_rank(), comm.Get_size()
    error, config = None, None
    try:
        x, y = net._inputs(x, y, min_rows=0)
        epochs = V.check_int("epochs", epochs, minimum=0)
        batch_size = V.check_int("batch_size", batch_size, minimum=1)
        accumulate_steps = V.check_int("accumulate_steps", accumulate_steps, minimum=1)
        checkpoint_every = V.check_int("checkpoint_every", checkpoint_every, minimum=1)
        hyper = net._hyper(lr, momentum, weight_decay, nesterov)
        if overlap and not hasattr(net._core, "backward_layer"):
            raise ValueError("`overlap`=True needs the compiled backend")
        if overlap and accumulate_steps != 1:
            raise ValueError("`overlap`=True needs `accumulate_steps`=1")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("`validation_data` must be a pair (x_val, y_val)")
            x_val, y_val = net._inputs(*validation_data, min_rows=0)
        if callback is not None and not callable(callback):
            raise TypeError("`callback` must be callable(epoch, logs)")
        if seed is not None and not isinstance(seed, np.random.Generator):
            seed = V.check_int("seed", seed, minimum=0)
        config = {
            "layer_sizes": net.layer_sizes, "activations": net.activations, "loss": net.loss,
            "reduction": net.reduction, "dtype": net.dtype.name, "epochs": epochs,
            "batch_size": batch_size, "hyper": hyper, "shuffle": bool(shuffle),
            "accumulate_steps": accumulate_steps, "overlap": bool(overlap),
            "verify": bool(verify), "validation": validation_data is not None,
            "checkpoint": checkpoint is not None, "checkpoint_every": checkpoint_every,
            "resume": resume is not None, "callback": callback is not None,
            "seed": seed if isinstance(seed, int) else None}
    except (TypeError, ValueError) as exc:
        error = exc
    _agree(comm, error, "bpcore.distributed.fit arguments", config)
    counts = comm.allgather(x.shape[0])
    n_global = sum(counts)
    if n_global == 0:
        raise ValueError("`x` has no rows on any rank")
    micro = max(math.ceil(c / batch_size) for c in counts)
    steps = math.ceil(micro / accumulate_steps)

    with net._lock:
        rng = _rank_rng(seed, comm)
        first_epoch, history = 0, {"loss": []}
        if validation_data is not None:
            history["val_loss"] = []
        if resume is not None:
            first_epoch, history, rng_state = _read_checkpoint(comm, net, resume)
            rng.bit_generator.state = rng_state
        else:
            # Every rank starts from rank 0's model and optimizer state.
            has_velocity = comm.bcast(net._velocity is not None, root=0)
            if has_velocity:
                comm.Bcast(net._velocity_block(1.0), root=0)
            else:
                net._velocity = None
        comm.Bcast(net._params, root=0)
        history["comm_seconds"] = []
        stepper = _Stepper(net, comm, x, y, batch_size=batch_size,
                           accumulate_steps=accumulate_steps, overlap=bool(overlap),
                           hyper=hyper)
        # NOTE: one rank with nothing to accumulate or overlap has nothing to
        # reduce: the compiled epoch loop of MLP.fit runs it (one nogil call per
        # epoch instead of a Python-level step), which is the very same
        # arithmetic -- the per-step path is bitwise equal to it too, see
        # tests/test_distributed.py -- without ~5% of per-step overhead on
        # small networks.
        epoch_loop = (size == 1 and accumulate_steps == 1 and not overlap
                      and _EPOCH_LOOP_AT_ONE_RANK)
        bar = _Progress(epochs - first_epoch, bool(progress) and rank == 0)
        try:
            for epoch in range(first_epoch, epochs):
                order = rng.permutation(x.shape[0]).astype(np.int64) if shuffle else None
                loss_sum = 0.0
                stepper.comm_seconds = 0.0
                if epoch_loop:
                    loss_sum = _one_rank_epoch(net, x, y, order, batch_size, hyper, epoch)
                else:
                    for step in range(steps):
                        batch_loss, _ = stepper.step(
                            order, step * accumulate_steps, f"epoch {epoch}, step {step}")
                        loss_sum += batch_loss
                logs = {"loss": loss_sum / n_global}
                history["loss"].append(logs["loss"])
                history["comm_seconds"].append(stepper.comm_seconds)
                if validation_data is not None:
                    logs["val_loss"] = _global_loss(comm, net, x_val, y_val)
                    history["val_loss"].append(logs["val_loss"])
                if verify:
                    hashes = comm.allgather(_param_hash(net))
                    if len(set(hashes)) != 1:
                        raise RuntimeError(f"the ranks' parameters differ after epoch {epoch} "
                                           f"(hashes {hashes})")
                if checkpoint is not None and (epoch + 1) % checkpoint_every == 0:
                    _write_checkpoint(comm, net, checkpoint, epoch + 1, history, rng)
                bar.update(logs)
                stop = callback is not None and callback(epoch, dict(logs)) is False
                if callback is not None and comm.allreduce(stop, op=MPI.LOR):
                    break
        finally:
            bar.close()
    return history


_EPOCH_LOOP_AT_ONE_RANK = True  # False: run the per-step path at one rank too (tests, bench)


def _one_rank_epoch(net, x, y, order, batch_size, hyper, epoch):
    """One epoch on a single rank through the compiled loop; returns the loss sum."""
    lr, momentum, weight_decay, nesterov = hyper
    status, loss_sum, done = net._core.train_epoch(
        net._params, net._grads, net._velocity_block(momentum), x, y, order, batch_size, lr,
        momentum, weight_decay, nesterov)
    if status == _NONFINITE:
        raise FloatingPointError(
            f"epoch {epoch}, step {done}: rank 0: non-finite loss or gradient; the "
            f"parameters are those from before this step -- try a smaller `lr`")
    if status:
        raise KeyboardInterrupt(f"training interrupted at epoch {epoch} after {done} steps")
    return loss_sum


def _global_loss(comm, net, x, y):
    """The loss over every rank's (x, y) rows, as if they were one array."""
    n = x.shape[0]
    loss = float(net._core.evaluate(net._params, x, y)) if n else 0.0
    mean = net.reduction.endswith("mean")
    total, count = comm.allreduce(np.array([loss * n if mean else loss, n], np.float64),
                                  op=MPI.SUM)
    return total / count if mean else total
