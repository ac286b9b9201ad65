"""``python -m bpcore``: the command-line face of bpcore.

Subcommands:

* ``demo`` -- seed 000's experiment: a 1000-100-10 ReLU network, linear
  output, sum-of-squares loss, learning rate 1e-6, 500 full-batch steps on 64
  random samples with standard-normal weights; prints the loss curve and the
  time per step of the compiled MLP next to the same model on the NumPy
  reference, both on the same number of threads (one by default).
* ``train`` -- trains an MLP on a CSV, .npy or .npz file and saves it with
  the preprocessing it was trained with (task, class labels, standardisation
  statistics, feature and target names), so ``predict`` and ``evaluate`` take
  the same raw data.  Under ``mpiexec -n N python -m bpcore train ...`` it
  trains data-parallel (:mod:`bpcore.distributed`): each rank reads only its
  shard of an .npy / .npz (memory-mapped), and only rank 0 prints and saves.
* ``predict`` -- class labels (or ``--proba``), or regression outputs, as CSV.
* ``evaluate`` -- loss, accuracy or R², and per-class counts.
* ``bench`` -- quick ratio tables (:mod:`bpcore._quickbench`); ``--full``: ``bench/run.py``.

Every user error (a bad argument or data file) is one line on stderr naming
the argument or file, and exit status 2; ``--debug`` shows the traceback.
"""
import argparse
import csv
import math
import os
import sys
import time

import numpy as np


class UserError(ValueError):
    """A mistake in the command line or the data: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """Defaults shown in ``--help``; a usage error is one line (``--help`` has the rest)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------

def _demo_run(backend, steps, seed, dtype, report=None):
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
    every = max(steps // 5, 1)
    elapsed = 0.0
    for i in range(steps):
        start = time.perf_counter()
        losses[i] = net.train_step(x, y, lr=1e-6)
        elapsed += time.perf_counter() - start
        if report is not None and ((i + 1) % every == 0 or i + 1 == steps):
            report(i + 1, losses[i])  # outside the timed region
    return losses, elapsed / steps


def _blas_limit(threads):
    """A context limiting NumPy's BLAS to ``threads`` (threadpoolctl when installed)."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext(False)
    return threadpool_limits(limits=threads, user_api="blas")


def demo(args):
    from bpcore import get_num_threads, set_num_threads

    if args.steps < 1:
        raise UserError(f"`--steps` must be >= 1; got {args.steps}")
    if args.threads < 1:
        raise UserError(f"`--threads` must be >= 1; got {args.threads}")
    if args.plot:
        try:
            import matplotlib
        except ImportError:
            raise UserError("`--plot` needs matplotlib, which is not installed: "
                            "pip install matplotlib") from None
        _check_writable("--plot", args.plot)
    dtype = np.dtype(args.dtype)
    print(f"bpcore demo: seed 000's network 1000-100-10 (ReLU hidden, linear output), N=64, "
          f"sum-of-squares loss, lr 1e-6, {args.steps} steps, {dtype}, standard-normal init "
          f"(seed {args.seed})")
    before = get_num_threads()
    set_num_threads(args.threads)
    try:
        with _blas_limit(args.threads) as limited:
            runs = {}
            for backend, name in (("compiled", "bpcore"), ("reference", "NumPy reference")):
                def report(step, loss, name=name):
                    print(f"  {name}: step {step}/{args.steps}, loss {loss:.6g}", file=sys.stderr,
                          flush=True)
                runs[backend] = _demo_run(backend, args.steps, args.seed, dtype, report)
    finally:
        set_num_threads(before)
    (losses, per_step), (ref_losses, ref_per_step) = runs["compiled"], runs["reference"]
    print(f"{'step':>6}  {'loss (bpcore)':>15}  {'loss (NumPy ref)':>16}")
    shown = sorted(set(range(0, args.steps, 50)) | {args.steps - 1})
    for i in shown:
        print(f"{i:>6}  {losses[i]:>15.6g}  {ref_losses[i]:>16.6g}")
    blas = (f"NumPy's BLAS limited to {args.threads}" if limited is not False
            else "NumPy's BLAS on its own default (install threadpoolctl to limit it)")
    print(f"threads: bpcore {args.threads} (--threads N to change), {blas}")
    ratio = ref_per_step / per_step
    words = (f"bpcore x{ratio:.2f} faster than the NumPy reference" if ratio >= 1 else
             f"bpcore x{1 / ratio:.2f} slower than the NumPy reference")
    print(f"time per step: bpcore {per_step * 1e6:.1f} us, NumPy reference "
          f"{ref_per_step * 1e6:.1f} us: {words}")
    if args.plot:
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

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


# ---------------------------------------------------------------------------
# data files
# ---------------------------------------------------------------------------

_MISSING = {"", "nan", "na", "n/a", "null", "none", "?"}


def _number(cell):
    """``float(cell)``, or None when the cell is not a number (missing values are numbers: NaN)."""
    try:
        return float(cell)
    except ValueError:
        return None


def _is_missing(cell):
    return cell.strip().lower() in _MISSING


class Table:
    """A data file as columns: ``names`` (or None), ``columns`` (list of 1-D arrays),
    ``path``; CSV cells stay strings until a column is used."""

    def __init__(self, path, columns, names, rows=None):
        self.path, self.columns, self.names = path, columns, names
        self.rows = rows  # file line of each row (CSV), for messages

    @property
    def n_columns(self):
        return len(self.columns)

    def label(self, j):
        name = f" {self.names[j]!r}" if self.names else ""
        return f"column {j + 1}{name}"

    def where(self, i, j):
        row = self.rows[i] if self.rows is not None else i + 1
        return f"{self.path}: row {row}, {self.label(j)}"


def read_csv(path):
    """A CSV file as a :class:`Table` of string columns (UTF-8, a BOM allowed).

    The first row is a header when one of its cells is neither a number nor
    empty in a column whose other rows are numbers -- so a row of numbers
    with an empty cell is data, and a first data row with a string label is
    data too.  Blank lines are skipped; every row must have the same width.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows, lines = [], []
            reader = csv.reader(f)
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                rows.append([c.strip() for c in cells])
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise UserError(f"{path}: not a readable CSV file ({exc})") from None
    if not rows:
        raise UserError(f"{path}: no rows")
    width = len(rows[0])
    for cells, line in zip(rows, lines):
        if len(cells) != width:
            raise UserError(f"{path}: row {line} has {len(cells)} columns; the first row has "
                            f"{width}")
    names = None
    if len(rows) > 1:
        # A header cell: not a number, not a missing value, above a column of numbers.
        body = rows[1:]
        numeric = [all(_number(r[j]) is not None or _is_missing(r[j]) for r in body)
                   for j in range(width)]
        if any(numeric[j] and _number(c) is None and not _is_missing(c)
               for j, c in enumerate(rows[0])):
            names = rows[0]
    elif not all(_number(c) is not None for c in rows[0]):
        names = rows[0]
    if names is not None:
        rows, lines = rows[1:], lines[1:]
    columns = [np.array([r[j] for r in rows], dtype=str) if rows else np.array([], dtype=str)
               for j in range(width)]
    return Table(path, columns, names, rows=lines)


def read_table(path, *, x_key="x", y_key="y"):
    """A :class:`Table` from a .csv, a 2-D .npy, or an .npz holding ``x_key`` and ``y_key``.

    An .npz table's last column is ``y`` (its first columns ``x``); a 2-D ``y``
    makes several target columns, given as ``--target`` "y".
    """
    from bpcore import _modelfile

    path = os.fspath(path)
    if path.endswith(".npz"):
        try:
            arrays = _modelfile.read_npz(path, [x_key, y_key])
        except ValueError as exc:
            raise UserError(f"{exc} (see --x-key/--y-key)") from None
        x, y = arrays[x_key], arrays[y_key]
        if x.ndim != 2 or y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
            raise UserError(f"{path}: {x_key!r} must be (n, n_features) and {y_key!r} (n,) or "
                            f"(n, n_outputs); got {x.shape} and {y.shape}")
        _check_rows(path, x)
        table = Table(path, [x[:, j] for j in range(x.shape[1])] + [y], None)
        return table
    if path.endswith(".npy"):
        table = _modelfile.read_npy(path)
        if table.ndim != 2:
            raise UserError(f"{path}: expected a 2-D table; got shape {table.shape}")
        _check_rows(path, table)
        return Table(path, [table[:, j] for j in range(table.shape[1])], None)
    return read_csv(path)


def _check_rows(path, array):
    """UserError for an array without rows.

    NOTE: checked before the columns are split out: an empty array may
    declare any number of columns (shape (0, 10**9) holds no bytes), so
    without rows the column count is not bounded by the file's size.
    """
    if array.shape[0] == 0:
        raise UserError(f"{path}: no rows (shape {array.shape})")


def _column_index(table, target, option="--target"):
    """The index of ``target`` (an int as Python indexing, or a column name)."""
    n = table.n_columns
    try:
        index = int(target)
    except (TypeError, ValueError):
        if table.names is None or target not in table.names:
            known = f"columns: {', '.join(table.names)}" if table.names else "it has no header"
            raise UserError(f"`{option}` {target!r} is not a column of {table.path} "
                            f"({known})") from None
        return table.names.index(target)
    if not -n <= index < n:
        raise UserError(f"`{option}` {index} is out of range for {table.path}, which has {n} "
                        f"columns (0..{n - 1}, or -{n}..-1 from the end)")
    return index % n


def _numeric(table, j, rows_ok):
    """Column ``j`` as float64 (rows ``rows_ok`` only); UserError at a non-number."""
    col = table.columns[j]
    if col.dtype.kind in "fiub":
        return col.astype(np.float64)[rows_ok]
    if col.dtype.kind not in "US":
        raise UserError(f"{table.path}: {table.label(j)} holds {col.dtype} values, not numbers")
    out = np.empty(len(col))
    for i, cell in enumerate(col):
        value = _number(cell) if not _is_missing(cell) else math.nan
        if value is None:
            raise UserError(f"{table.where(i, j)}: {str(cell)!r} is not a number")
        out[i] = value
    return out[rows_ok]


def _missing_rows(table, columns):
    """Boolean (n,): rows with a missing value in any of ``columns``."""
    n = len(table.columns[0]) if table.columns else 0
    bad = np.zeros(n, bool)
    for j in columns:
        col = table.columns[j]
        if col.dtype.kind in "US":
            bad |= np.array([_is_missing(str(c)) for c in col], bool)
        elif col.dtype.kind == "f":
            bad |= np.isnan(col).reshape(n, -1).any(axis=1)
    return bad


def _check_missing(table, columns, drop):
    """Rows to keep: all, or (``drop``) those without missing values; else a UserError
    naming the first missing cell."""
    bad = _missing_rows(table, columns)
    if bad.any() and not drop:
        i = int(np.argmax(bad))
        j = next(j for j in columns if _missing_rows(table, [j])[i])
        raise UserError(f"{table.where(i, j)}: missing value; fill it in or pass "
                        f"--drop-missing to skip such rows")
    return ~bad


def features_and_target(table, target, *, drop_missing=False, need_target=True,
                        feature_names=None):
    """(x float64 (n, d), raw target column or None, feature names, target name).

    With ``feature_names`` (a model's), the features are those columns by
    name when the table has a header, else all but the target column.
    """
    n_cols = table.n_columns
    t = None
    if need_target or target is not None:
        t = _column_index(table, target) if target is not None else None
    if feature_names is not None and table.names is not None:
        missing = [name for name in feature_names if name not in table.names]
        if missing:
            raise UserError(f"{table.path}: no column {missing[0]!r}, which the model was "
                            f"trained on (columns: {', '.join(table.names)})")
        feats = [table.names.index(name) for name in feature_names]
    else:
        feats = [j for j in range(n_cols) if j != t]
    if not feats:
        raise UserError(f"{table.path}: no feature columns besides the target")
    keep = _check_missing(table, feats + ([t] if t is not None else []), drop_missing)
    if not keep.any():
        raise UserError(f"{table.path}: no rows" + (" left after --drop-missing"
                                                    if drop_missing else ""))
    x = np.column_stack([_numeric(table, j, keep) for j in feats])
    y = table.columns[t][keep] if t is not None else None
    names = ([table.names[j] for j in feats] if table.names is not None
             else [f"x{j}" for j in feats])
    target_name = (table.names[t] if table.names is not None else f"column {t}") \
        if t is not None else None
    return x, y, names, target_name


# ---------------------------------------------------------------------------
# the preprocessing a model carries
# ---------------------------------------------------------------------------

_KINDS = {"i": "integer", "u": "integer", "b": "integer", "f": "float", "U": "string",
          "S": "string"}


def _target_kind(y):
    """"integer", "float" or "string" for a target column (CSV cells parsed)."""
    if y.dtype.kind in "US":
        cells = [str(c) for c in y.ravel()]
        if all(_as_int(c) is not None for c in cells):
            return "integer"
        if all(_number(c) is not None for c in cells):
            return "float"
        return "string"
    return _KINDS.get(y.dtype.kind, "other")


def _as_int(cell):
    try:
        return int(cell)
    except ValueError:
        return None


def infer_task(y, task, target_name):
    """The task (given or inferred from the target's values) and a sentence saying which."""
    kind = _target_kind(y)
    if task is None:
        task = "regression" if kind == "float" else "classification"
        return task, (f"task: {task} (inferred from the {kind} values of target "
                      f"{target_name!r}; "
                      f"--task to override)")
    return task, f"task: {task}"


def encode_target(y, task, target_name, *, comm=None):
    """(classes or None, encoded y): int codes for classification, float64 for regression."""
    kind = _target_kind(y)
    if task == "regression":
        if kind not in ("integer", "float"):
            raise UserError(f"`--task regression` needs a numeric target; {target_name} holds "
                            f"{kind} values such as {str(y.ravel()[0])!r}")
        return None, np.asarray(y.astype(np.float64) if y.dtype.kind in "US" else y,
                                np.float64)
    if y.ndim != 1:
        raise UserError(f"`--task classification` needs one target column; {target_name} has "
                        f"{y.shape[1]}")
    if kind == "integer":
        try:
            values = y.astype(np.int64)  # (CSV cells parse: "5" -> 5)
        except OverflowError:  # found by tests/test_files.py's fuzzer
            big = next(c for c in y.ravel() if not -2 ** 63 <= int(c) < 2 ** 63)
            raise UserError(f"{target_name}: the integer label {str(big)[:40]!r} is beyond "
                            f"64 bits; use --task regression, or labels that are not "
                            f"numbers") from None
    elif kind == "float":
        values = y.astype(np.float64)
        if not np.all(values == np.round(values)):
            bad = values[values != np.round(values)][0]
            raise UserError(f"`--task classification` needs integer or string labels; "
                            f"{target_name} holds non-integral numbers such as {bad!r}")
        values = values.astype(np.int64)
    elif kind == "string":
        values = y.astype(str)
    else:
        raise UserError(f"{target_name}: cannot use {y.dtype} values as class labels")
    classes = np.unique(values)
    if comm is not None:
        classes = np.unique(np.concatenate(comm.allgather(classes)))
    if classes.size < 2 and comm is None:
        raise UserError(f"`--task classification` needs at least 2 classes; {target_name} "
                        f"has only {classes.tolist()}")
    return classes, np.searchsorted(classes, values).astype(np.int64)


def standardization(x, *, comm=None):
    """(mean, std) of the columns of ``x`` (of all ranks' rows with ``comm``); std 0 -> 1."""
    total = np.array([x.shape[0]], np.float64)
    sums = x.sum(axis=0, dtype=np.float64)
    if comm is not None:
        total, sums = comm.allreduce(total), comm.allreduce(sums)
    mean = sums / max(total[0], 1)
    squares = ((x - mean) ** 2).sum(axis=0, dtype=np.float64)
    if comm is not None:
        squares = comm.allreduce(squares)
    std = np.sqrt(squares / max(total[0], 1))
    return mean, np.where(std > 0, std, 1.0)


def save_model(path, net, prep):
    """Save ``net`` with the CLI's preprocessing as ``extra/cli_*`` entries."""
    from bpcore import _modelfile

    extra = {f"cli_{key}": value for key, value in prep.items() if value is not None}
    _modelfile.save(path, layer_sizes=net.layer_sizes, activations=net.activations,
                    loss=net.loss, reduction=net.reduction, dtype=net.dtype,
                    params=net.parameters, extra=extra)


def load_model(path):
    """(MLP, preprocessing dict) of a model file; files without the CLI's entries
    (``MLP.save``, older versions) get the identity preprocessing."""
    from bpcore import MLP, _modelfile

    path = os.fspath(path)
    entries = _modelfile.load(path)
    net = MLP.load(path)
    extra = entries["extra"]
    prep = {key[len("cli_"):]: value for key, value in extra.items() if key.startswith("cli_")}
    if "task" in prep:
        prep["task"] = str(prep["task"])
    else:
        prep["task"] = "classification" if net.loss == "cross_entropy" else "regression"
    if "target_index" in prep:
        prep["target_index"] = int(prep["target_index"])
    if "feature_names" in prep:
        prep["feature_names"] = [str(s) for s in prep["feature_names"]]
    if "target_name" in prep:
        prep["target_name"] = str(prep["target_name"])
    if prep["task"] == "classification" and "classes" not in prep:
        prep["classes"] = np.arange(net.layer_sizes[-1])
    return net, prep


def _apply(net, prep, x):
    """Raw features -> the model's input (standardized as in training, in its dtype)."""
    if x.shape[1] != net.layer_sizes[0]:
        raise UserError(f"the model takes {net.layer_sizes[0]} features; the data has "
                        f"{x.shape[1]}")
    if "mean" in prep:
        x = (x - prep["mean"]) / prep["std"]
    return np.ascontiguousarray(x, dtype=net.dtype)


# ---------------------------------------------------------------------------
# train / predict / evaluate
# ---------------------------------------------------------------------------

def _check_writable(option, path):
    """UserError unless a file can be created at ``path`` (tried now, not after training)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"`{option}` {path!r} is a directory")
    directory = os.path.dirname(os.path.realpath(path))
    probe = os.path.join(directory, f".bpcore-probe-{os.getpid()}")
    try:
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"`{option}` {path!r}: cannot write there ({exc.strerror})") from None


def _hidden(text):
    """``--hidden 64,32`` -> [64, 32] (empty for none)."""
    widths = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            width = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"widths must be positive integers, "
                                             f"comma-separated; got {part!r}") from None
        if width < 1:
            raise argparse.ArgumentTypeError(f"widths must be >= 1; got {width}")
        widths.append(width)
    return widths


def _prepare_training(args, x, y_raw, names, target_name, *, comm=None, rank0=True):
    """Encoded targets, scaled features and the preprocessing to store."""
    task, sentence = infer_task(y_raw, args.task, target_name)
    if rank0:
        print(sentence, file=sys.stderr)
    classes, y = encode_target(y_raw, task, target_name, comm=comm)
    prep = {"task": np.array(task), "classes": classes,
            "feature_names": np.array(names, dtype=str),
            "target_name": np.array(target_name if target_name is not None else "")}
    if args.standardize:
        mean, std = standardization(x, comm=comm)
        prep["mean"], prep["std"] = mean, std
        x = (x - mean) / std
    if task == "classification":
        n_out = len(classes)
    else:
        y = np.ascontiguousarray(y.reshape(len(y), -1), dtype=args.dtype)
        n_out = y.shape[1] if comm is None else max(comm.allgather(y.shape[1]))
    return np.ascontiguousarray(x, dtype=args.dtype), y, n_out, task, prep


def _report_training(net, x, y, task):
    """Training accuracy (classification) or R² (regression) as a line."""
    out = net.predict(x)
    if task == "classification":
        return f"training accuracy {float((out.argmax(axis=1) == y).mean()):.4f}"
    return f"training R² {_r2(y, out):.4f}"


def _r2(y, pred):
    y = np.asarray(y, np.float64).reshape(pred.shape)
    residual = ((y - pred) ** 2).sum()
    total = ((y - y.mean(axis=0)) ** 2).sum()
    return float(1 - residual / total) if total > 0 else float("nan")


def train(args):
    from bpcore import MLP

    if args.out:
        _check_writable("--out", args.out)
    if _launched_by_mpi():
        return _train_distributed(args)
    table = read_table(args.data, x_key=args.x_key, y_key=args.y_key)
    target = args.target if not args.data.endswith(".npz") else -1
    x, y_raw, names, target_name = features_and_target(table, target,
                                                       drop_missing=args.drop_missing)
    x, y, n_out, task, prep = _prepare_training(args, x, y_raw, names, target_name)
    prep["target_index"] = np.int64(_column_index(table, target))
    loss = "cross_entropy" if task == "classification" else "mse"
    net = MLP([x.shape[1], *args.hidden, n_out], activation=args.activation, loss=loss,
              dtype=args.dtype, seed=args.seed)
    print(f"training {net} on {x.shape[0]} samples", file=sys.stderr)
    history = net.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      momentum=args.momentum, seed=args.seed, progress=not args.quiet)
    for epoch, value in enumerate(history["loss"]):
        print(f"epoch {epoch + 1:>4}  loss {value:.6g}")
    print(_report_training(net, x, y, task))
    if args.out:
        save_model(args.out, net, prep)
        print(f"model saved to {args.out}")
    return 0


def _model_inputs(args, prep, *, need_target):
    """(x raw, y raw or None) of ``args.data`` for a model with preprocessing ``prep``."""
    table = read_table(args.data, x_key=args.x_key, y_key=args.y_key)
    names = prep.get("feature_names")
    target = args.target
    if target is None:
        if table.names is not None and prep.get("target_name") in table.names:
            target = prep["target_name"]
        elif table.names is None and names is not None and table.n_columns == len(names) + 1:
            target = prep.get("target_index", -1)
        elif args.data.endswith(".npz"):
            target = -1
        elif need_target:
            raise UserError(f"{args.data}: cannot tell the target column (the model was "
                            f"trained with {prep.get('target_name') or 'an unnamed target'}); "
                            f"pass --target")
    x, y, _, _ = features_and_target(table, target, drop_missing=args.drop_missing,
                                     need_target=need_target, feature_names=names)
    return x, y


def _labels(prep, codes):
    return np.asarray(prep["classes"])[codes]


def predict(args):
    net, prep = load_model(args.model)
    if args.out:
        _check_writable("--out", args.out)
    if args.proba and prep["task"] != "classification":
        raise UserError(f"`--proba` needs a classification model; {args.model} is a "
                        f"regression model")
    x, _ = _model_inputs(args, prep, need_target=False)
    out = net.predict(_apply(net, prep, x))
    if prep["task"] == "classification":
        if args.proba:
            header = [str(c) for c in prep["classes"]]
            rows = [[repr(float(v)) for v in row] for row in _probabilities(net, out)]
        else:
            header = [prep.get("target_name") or "prediction"]
            rows = [[str(v)] for v in _labels(prep, out.argmax(axis=1))]
    else:
        name = prep.get("target_name") or "prediction"
        header = [name] if out.shape[1] == 1 else [f"{name}{k}" for k in range(out.shape[1])]
        rows = [[repr(float(v)) for v in row] for row in out]
    _write_csv(args.out, header, rows)
    if args.out:
        print(f"{len(rows)} predictions written to {args.out}", file=sys.stderr)
    return 0


def _probabilities(net, out):
    """Class probabilities from the network's output (softmax of logits if it has none)."""
    out = np.asarray(out, np.float64)
    if net.activations[-1] in ("softmax", "sigmoid") and np.all((out >= 0) & (out <= 1)):
        return out / out.sum(axis=1, keepdims=True)
    shifted = np.exp(out - out.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _write_csv(path, header, rows):
    """CSV to ``path`` atomically enough for a user (written whole, then renamed), or stdout."""
    if not path:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def evaluate(args):
    net, prep = load_model(args.model)
    x, y_raw = _model_inputs(args, prep, need_target=True)
    xin = _apply(net, prep, x)
    target_name = prep.get("target_name") or "the target"
    if prep["task"] == "classification":
        classes = np.asarray(prep["classes"])
        values = _as_labels(y_raw, classes)
        known = np.isin(values, classes)
        if not known.all():
            bad = values[~known][0]
            raise UserError(f"{args.data}: label {bad!r} is not one of the model's classes "
                            f"({', '.join(map(str, classes.tolist()))})")
        codes = np.searchsorted(classes, values)
        loss = net.evaluate(xin, codes)
        pred = net.predict(xin).argmax(axis=1)
        print(f"loss {loss:.6g}")
        print(f"accuracy {float((pred == codes).mean()):.4f} ({int((pred == codes).sum())} of "
              f"{len(codes)})")
        print(f"{'class':>12}  {'count':>7}  {'predicted':>9}  {'correct':>7}")
        for k, label in enumerate(classes):
            print(f"{str(label):>12}  {int((codes == k).sum()):>7}  "
                  f"{int((pred == k).sum()):>9}  {int(((codes == k) & (pred == k)).sum()):>7}")
    else:
        _, y = encode_target(y_raw, "regression", target_name)
        y = y.reshape(len(y), -1).astype(net.dtype)
        loss = net.evaluate(xin, y)
        print(f"loss {loss:.6g}")
        print(f"R² {_r2(y, net.predict(xin)):.4f}")
    return 0


def _as_labels(y_raw, classes):
    """Raw target cells as values comparable with a model's ``classes``."""
    if classes.dtype.kind in "iu":
        kind = _target_kind(y_raw)
        if kind not in ("integer", "float"):
            raise UserError(f"labels must be numbers for this model (classes "
                            f"{classes.tolist()}); got {str(y_raw[0])!r}")
        values = y_raw.astype(np.float64)
        return values.astype(np.int64) if np.all(values == np.round(values)) else values
    return y_raw.astype(str)


# ---------------------------------------------------------------------------
# MPI
# ---------------------------------------------------------------------------

def _launched_by_mpi():
    """True under an MPI launcher with more than one rank (read from the environment only,
    so a plain run never imports mpi4py)."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if name in os.environ:
            try:
                return int(os.environ[name]) > 1
            except ValueError:
                return False
    return False


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
            target = -1 if args.data.endswith(".npz") else int(args.target)
            x, y_raw = distributed.load_shard(args.data, comm, x_key=args.x_key,
                                              y_key=args.y_key, target=target)
            x = np.asarray(x, np.float64)
            names, target_name = [f"x{j}" for j in range(x.shape[1])], f"column {target}"
        else:  # CSV cannot be sliced without parsing: every rank reads it, keeps its rows
            table = read_table(args.data)
            x, y_raw, names, target_name = features_and_target(
                table, args.target, drop_missing=args.drop_missing)
            rows = distributed.shard(x.shape[0], comm)
            x, y_raw = x[rows], y_raw[rows]
        x, y, n_out, task, prep = _prepare_training(args, x, y_raw, names, target_name,
                                                    comm=comm, rank0=rank == 0)
        loss = "cross_entropy" if task == "classification" else "mse"
        net = MLP([x.shape[1], *args.hidden, n_out], activation=args.activation, loss=loss,
                  dtype=args.dtype, seed=args.seed)
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
        if task == "classification":
            correct = comm.allreduce(int((net.predict(x).argmax(axis=1) == y).sum()))
        if rank == 0:
            for epoch, value in enumerate(history["loss"]):
                print(f"epoch {epoch + 1:>4}  loss {value:.6g}")
            if correct is not None:
                print(f"training accuracy {correct / n_total:.4f}")
            if args.out:
                save_model(args.out, net, prep)
                print(f"model saved to {args.out}")
            sys.stdout.flush()
    except (UserError, ValueError, OSError) as exc:  # a bad data file, found by this rank
        print(f"rank {rank}: {exc}", file=sys.stderr)
        sys.stderr.flush()
        comm.Abort(2)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)
    return 0


# ---------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------

def bench(args):
    from bpcore import _quickbench

    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"`--threads` must be >= 1; got {args.threads}")
    if args.full or args.distributed:  # the harness of a source checkout's bench/
        return _quickbench.run_harness(
            (["--only", "distributed"] if args.distributed else ["--full"])
            + (["--threads", str(args.threads)] if args.threads else []))
    return _quickbench.quick(threads=args.threads or 1, smoke=args.smoke)


def _data_options(p, *, target_default):
    p.add_argument("--target", default=target_default,
                   help="the target column: an index (negative counts from the end) or a "
                        "header name" + ("" if target_default is not None else
                                         "; default: the model's"))
    p.add_argument("--x-key", default="x", help="the features' array in an .npz")
    p.add_argument("--y-key", default="y", help="the target's array in an .npz")
    p.add_argument("--drop-missing", action="store_true",
                   help="skip rows with a missing value instead of stopping at the first")


def _debug_option(p):
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")


def main(argv=None):
    parser = _Parser(prog="python -m bpcore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("demo", help="seed 000's two-layer ReLU network, timed against NumPy")
    p.add_argument("--steps", type=int, default=500, help="training steps on each backend")
    p.add_argument("--seed", type=int, default=0, help="seeds the data and the initial weights")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                   help="floating-point precision of the network and data")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for bpcore and for NumPy's BLAS (the same, to compare fairly)")
    p.add_argument("--plot", metavar="FILE.png", help="write the loss curve (needs matplotlib)")
    _debug_option(p)
    p.set_defaults(func=demo)
    p = sub.add_parser("train", help="train an MLP on a .csv, .npy or .npz file and save it")
    p.add_argument("data", help="a .csv/.npy table (target in --target) or an .npz with x and y")
    _data_options(p, target_default="-1")
    p.add_argument("--task", choices=["regression", "classification"], default=None,
                   help="default: classification for integer or string targets, regression "
                        "for floats")
    p.add_argument("--hidden", type=_hidden, default="64", help="hidden widths, comma-separated")
    from bpcore.nn import ACTIVATIONS  # the MLP's own list: every activation it trains

    p.add_argument("--activation", default="relu", choices=list(ACTIVATIONS),
                   help="hidden activation (PyTorch's default parameters)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the data")
    p.add_argument("--batch-size", type=int, default=32, help="rows per step")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="precision of the model")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the shuffles")
    p.add_argument("--standardize", action="store_true",
                   help="scale features to mean 0, std 1 (stored in the model)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", help="where to save the model (.npz)")
    _debug_option(p)
    p.set_defaults(func=train)
    for name, func, text in (("predict", predict, "class labels or outputs of a saved model"),
                             ("evaluate", evaluate, "loss and accuracy or R² of a saved model")):
        p = sub.add_parser(name, help=text)
        p.add_argument("model", help="a model file written by train")
        p.add_argument("data", help="a .csv/.npy table or an .npz, raw as for train")
        _data_options(p, target_default=None)
        if name == "predict":
            p.add_argument("--out", help="CSV file for the predictions (default: stdout)")
            p.add_argument("--proba", action="store_true",
                           help="class probabilities instead of labels")
        _debug_option(p)
        p.set_defaults(func=func)
    p = sub.add_parser("bench", help="quick ratio tables: bpcore vs NumPy, PyTorch, scikit-learn")
    p.add_argument("--threads", type=int, help="threads for every contender (default: 1)")
    p.add_argument("--full", action="store_true",
                   help="every table: runs bench/run.py of a source checkout")
    p.add_argument("--distributed", action="store_true",
                   help="only bench/run.py's samples/s of 1 process vs 2 MPI ranks (mpiexec)")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny, for tests
    p.set_defaults(func=bench)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ValueError, TypeError, OSError, FloatingPointError) as exc:
        if getattr(args, "debug", False):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            message = f"{exc.filename}: {exc.strerror}"
        print(f"python -m bpcore {args.command}: error: {message}", file=sys.stderr)
        return 2
