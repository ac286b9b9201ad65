"""``python -m bpcore``: the command-line face of bpcore.

Subcommands:

* ``demo`` -- seed 000's experiment: a 1000-100-10 ReLU network, linear
  output, sum-of-squares loss, learning rate 1e-6, 500 full-batch steps on 64
  random samples with standard-normal weights; prints the loss curve and the
  time per step of the compiled MLP next to the same model on the NumPy
  reference.
* ``train`` -- trains an MLP on a CSV, .npy or .npz file and saves it.
  Under ``mpiexec -n N python -m bpcore train ...`` it trains data-parallel
  (:mod:`bpcore.distributed`): each rank reads only its shard of an .npy /
  .npz (memory-mapped), and only rank 0 prints and saves.
* ``bench`` -- quick ratio tables (:mod:`bpcore._quickbench`); ``--full``: ``bench/run.py``.
"""
import argparse
import sys
import time

import numpy as np


def _demo_run(backend, steps, seed, dtype):
    """Seed 000's run on one backend; returns (losses, seconds per step)."""
    from bpcore import MLP

    n, d_in, hidden, d_out = 64, 1000, 100, 10
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in)).astype(dtype)
    y = rng.standard_normal((n, d_out)).astype(dtype)
    net = MLP([d_in, hidden, d_out], activation="relu", output_activation="identity",
              loss="mse", reduction="sum", dtype=dtype, seed=rng, init="normal",
              backend=backend)
    losses = np.empty(steps)
    start = time.perf_counter()
    for i in range(steps):
        losses[i] = net.train_step(x, y, lr=1e-6)
    return losses, (time.perf_counter() - start) / steps


def demo(args):
    dtype = np.dtype(args.dtype)
    losses, per_step = _demo_run("compiled", args.steps, args.seed, dtype)
    ref_losses, ref_per_step = _demo_run("reference", args.steps, args.seed, dtype)
    print(f"bpcore demo: seed 000's network 1000-100-10 (ReLU hidden, linear output), N=64, "
          f"sum-of-squares loss, lr 1e-6, {args.steps} steps, {dtype}, standard-normal init "
          f"(seed {args.seed})")
    print(f"{'step':>6}  {'loss (bpcore)':>15}  {'loss (NumPy ref)':>16}")
    shown = list(range(0, args.steps, 50)) + [args.steps - 1]
    for i in shown:
        print(f"{i:>6}  {losses[i]:>15.6g}  {ref_losses[i]:>16.6g}")
    print(f"time per step: bpcore {per_step * 1e6:.1f} us, NumPy reference "
          f"{ref_per_step * 1e6:.1f} us (x{ref_per_step / per_step:.2f}); "
          f"threads: {_threads()}")
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("--plot needs matplotlib: pip install 'bpcore[plot]'", file=sys.stderr)
            return 2
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.semilogy(losses, label="bpcore")
        ax.semilogy(ref_losses, "--", label="NumPy reference")
        ax.set_xlabel("step")
        ax.set_ylabel("sum-of-squares loss")
        ax.set_title("bpcore demo (seed 000)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"loss curve written to {args.plot}")
    return 0


def _threads():
    from bpcore import get_num_threads

    return get_num_threads()


def _load_table(path, target, x_key, y_key):
    """(x, y) from a .csv (header optional), .npy (target column) or .npz (two arrays)."""
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in (x_key, y_key) if k not in archive.files]
            if missing:
                raise SystemExit(f"{path}: no array named {missing[0]!r} "
                                 f"(has {', '.join(archive.files)}); use --x-key/--y-key")
            return archive[x_key], archive[y_key]
    if path.endswith(".npy"):
        table = np.load(path, allow_pickle=False)
    else:
        with open(path) as f:
            first = f.readline()
        try:
            [float(v) for v in first.strip().split(",")]
            skip = 0
        except ValueError:
            skip = 1
        table = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    if table.ndim != 2 or table.shape[1] < 2:
        raise SystemExit(f"{path}: expected a 2-D table with a target column; "
                         f"got shape {table.shape}")
    col = target % table.shape[1]
    return np.delete(table, col, axis=1), table[:, col]


def _launched_by_mpi():
    """True under an MPI launcher with more than one rank (read from the environment only,
    so a plain run never imports mpi4py)."""
    import os

    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if name in os.environ:
            try:
                return int(os.environ[name]) > 1
            except ValueError:
                return False
    return False


def _prepare(x, y, args, *, comm=None):
    """Float features, encoded labels or float targets, optional standardizing.

    With ``comm``, class labels and the feature statistics are those of all
    ranks' rows together, so every rank builds the same model and scaling.
    """
    dtype = np.dtype(args.dtype)
    x = np.asarray(x, dtype=dtype)
    if args.task == "classification":
        classes = np.unique(y)
        if comm is not None:
            classes = np.unique(np.concatenate(comm.allgather(classes)))
        y = np.searchsorted(classes, y).astype(np.int64)
        n_out = len(classes)
    else:
        y = np.asarray(y, dtype=dtype).reshape(len(y), -1)
        n_out = y.shape[1]
        if comm is not None:
            n_out = max(comm.allgather(n_out))
    if args.standardize:
        total = np.array([x.shape[0]], np.float64)
        sums = x.sum(axis=0, dtype=np.float64)
        if comm is not None:
            total, sums = comm.allreduce(total), comm.allreduce(sums)
        mean = sums / max(total[0], 1)
        squares = ((x - mean) ** 2).sum(axis=0, dtype=np.float64)
        if comm is not None:
            squares = comm.allreduce(squares)
        std = np.sqrt(squares / max(total[0], 1))
        x = ((x - mean) / np.where(std > 0, std, 1)).astype(dtype)
    return x, y, n_out


def train(args):
    from bpcore import MLP

    if _launched_by_mpi():
        return _train_distributed(args)
    x, y = _load_table(args.data, args.target, args.x_key, args.y_key)
    x, y, n_out = _prepare(x, y, args)
    sizes = [x.shape[1], *[int(h) for h in args.hidden.split(",") if h], n_out]
    loss = "cross_entropy" if args.task == "classification" else "mse"
    net = MLP(sizes, activation=args.activation, loss=loss, dtype=args.dtype, seed=args.seed)
    print(f"training {net} on {x.shape[0]} samples", file=sys.stderr)
    history = net.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      momentum=args.momentum, seed=args.seed, progress=not args.quiet)
    for epoch, value in enumerate(history["loss"]):
        print(f"epoch {epoch + 1:>4}  loss {value:.6g}")
    if args.task == "classification":
        accuracy = float((net.predict(x).argmax(axis=1) == y).mean())
        print(f"training accuracy {accuracy:.4f}")
    if args.out:
        net.save(args.out)
        print(f"model saved to {args.out}")
    return 0


def _train_distributed(args):
    """``train`` on every rank of an MPI job: shards in, rank 0's output and model out.

    NOTE: errors inside bpcore.distributed.fit are raised on every rank at
    once; anything else that fails on one rank only (a bug, an unreadable
    file on one node) aborts the job so the others never wait forever.
    """
    import traceback

    from bpcore import MLP
    from bpcore import distributed

    comm = distributed.MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    try:
        if args.data.endswith((".npz", ".npy")):
            x, y = distributed.load_shard(args.data, comm, x_key=args.x_key, y_key=args.y_key,
                                          target=args.target)
        else:  # CSV cannot be sliced without parsing: every rank reads it, keeps its rows
            x, y = _load_table(args.data, args.target, args.x_key, args.y_key)
            rows = distributed.shard(x.shape[0], comm)
            x, y = x[rows], y[rows]
        x, y, n_out = _prepare(x, y, args, comm=comm)
        sizes = [x.shape[1], *[int(h) for h in args.hidden.split(",") if h], n_out]
        loss = "cross_entropy" if args.task == "classification" else "mse"
        net = MLP(sizes, activation=args.activation, loss=loss, dtype=args.dtype,
                  seed=args.seed)
        n_total = comm.allreduce(x.shape[0])
        if rank == 0:
            print(f"training {net} on {n_total} samples over {size} ranks "
                  f"(batch {args.batch_size} per rank)", file=sys.stderr)
        try:
            history = distributed.fit(net, x, y, comm=comm, epochs=args.epochs,
                                      batch_size=args.batch_size, lr=args.lr,
                                      momentum=args.momentum, seed=args.seed,
                                      progress=not args.quiet and rank == 0)
        except (FloatingPointError, ValueError, TypeError) as exc:
            # Raised by bpcore.distributed on every rank at once: report once, exit.
            if rank == 0:
                print(f"error: {exc}", file=sys.stderr)
            return 1
        correct = None
        if args.task == "classification":
            correct = comm.allreduce(int((net.predict(x).argmax(axis=1) == y).sum()))
        if rank == 0:
            for epoch, value in enumerate(history["loss"]):
                print(f"epoch {epoch + 1:>4}  loss {value:.6g}")
            if correct is not None:
                print(f"training accuracy {correct / n_total:.4f}")
            if args.out:
                net.save(args.out)
                print(f"model saved to {args.out}")
            sys.stdout.flush()
    except SystemExit as exc:  # a bad data file, found by this rank
        print(f"rank {rank}: {exc}", file=sys.stderr)
        sys.stderr.flush()
        comm.Abort(2)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)
    return 0


def bench(args):
    from bpcore import _quickbench

    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"`--threads` must be >= 1; got {args.threads}")
    if args.full or args.distributed:  # the harness of a source checkout's bench/
        return _quickbench.run_harness(
            (["--only", "distributed"] if args.distributed else ["--full"])
            + (["--threads", str(args.threads)] if args.threads else []))
    return _quickbench.quick(threads=args.threads or 1, smoke=args.smoke)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bpcore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="seed 000's two-layer ReLU network, timed against NumPy")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--plot", metavar="FILE.png", help="write the loss curve (needs matplotlib)")
    p.set_defaults(func=demo)
    p = sub.add_parser("train", help="train an MLP on a .csv, .npy or .npz file and save it")
    p.add_argument("data", help="a .csv/.npy table (target in --target) or an .npz with x and y")
    p.add_argument("--target", type=int, default=-1, help="target column of a table (default: last)")
    p.add_argument("--x-key", default="x")
    p.add_argument("--y-key", default="y")
    p.add_argument("--task", choices=["regression", "classification"], default="regression")
    p.add_argument("--hidden", default="64", help="hidden widths, comma-separated")
    p.add_argument("--activation", default="relu", choices=["relu", "sigmoid", "tanh",
                                                            "identity"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--standardize", action="store_true", help="scale features to mean 0, std 1")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", help="where to save the model (.npz)")
    p.set_defaults(func=train)
    p = sub.add_parser("bench", help="quick ratio tables: bpcore vs NumPy, PyTorch, scikit-learn")
    p.add_argument("--threads", type=int, help="threads for every contender (default: 1)")
    p.add_argument("--full", action="store_true",
                   help="every table: runs bench/run.py of a source checkout")
    p.add_argument("--distributed", action="store_true",
                   help="only bench/run.py's samples/s of 1 process vs 2 MPI ranks (mpiexec)")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny, for tests
    p.set_defaults(func=bench)
    args = parser.parse_args(argv)
    return args.func(args)
