"""bpcore.distributed: data-parallel training equals single-process training.

The MPI tests start ``mpiexec -n 2`` / ``-n 3`` in a subprocess (with a
timeout, outside the source tree) on scripts that save their results as
.npz; the comparisons against single-process ``MLP.train_step`` runs happen
here.  On this 2-core machine ``-n 3`` oversubscribes, which is fine for
correctness.  mpi4py and mpiexec are test requirements: skipped locally
without them, an error in CI.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

import bpcore
from bpcore import MLP
from conftest import import_oracle, run_python

MPI = import_oracle("mpi4py.MPI")
from bpcore import distributed as D  # noqa: E402  (needs mpi4py)

MPIEXEC = (shutil.which("mpiexec", path=os.path.dirname(sys.executable))
           or shutil.which("mpiexec"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(bpcore.__file__)))
needs_mpiexec = pytest.mark.skipif(
    MPIEXEC is None and os.environ.get("CI", "").lower() not in ("1", "true", "yes"),
    reason="mpiexec not found (pip install mpich)")


class FakeComm:
    """Rank and size, and an allgather as if every rank had this one's part: enough for
    shard() and load_shard()."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def allgather(self, obj):
        return [obj] * self.size


def run_mpi(n, code, cwd, *, timeout=60, argv=(), check=True):
    """Run ``code`` as a script on ``n`` ranks in ``cwd``; returns the CompletedProcess."""
    script = os.path.join(cwd, "job.py")
    with open(script, "w") as f:
        f.write(textwrap.dedent(code))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    res = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, script, *argv], cwd=cwd,
                         env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


# ---------------------------------------------------------------------------
# The problems both sides build: data, model, settings
# ---------------------------------------------------------------------------

PROBLEM = """
import numpy as np
from bpcore import MLP

def problem(case):
    rng = np.random.default_rng(case["data_seed"])
    x = rng.standard_normal((case["n"], 7))
    if case["loss"] == "cross_entropy":
        y = rng.integers(0, 4, case["n"])
    else:
        y = rng.standard_normal((case["n"], 4))
    net = MLP([7, 9, 6, 4], activation="tanh", loss=case["loss"],
              reduction=case["reduction"], dtype="float64", seed=case["init_seed"],
              dropout=case.get("dropout", 0.0))
    return net, x, y
"""
exec(PROBLEM)  # problem(): the same data and model here and in the jobs

PRELUDE = """
import json, sys
from mpi4py import MPI
from bpcore import distributed as D
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
""" + PROBLEM

CASES = [
    dict(loss="mse", reduction="mean", momentum=0.9, nesterov=True, weight_decay=1e-3,
         accumulate_steps=1, overlap=False, batch_size=5),
    dict(loss="cross_entropy", reduction="mean", momentum=0.5, nesterov=False,
         weight_decay=0.0, accumulate_steps=1, overlap=False, batch_size=4),
    dict(loss="mse", reduction="half_sum", momentum=0.0, nesterov=False, weight_decay=0.0,
         accumulate_steps=1, overlap=False, batch_size=6),
    dict(loss="cross_entropy", reduction="sum", momentum=0.9, nesterov=False,
         weight_decay=1e-2, accumulate_steps=2, overlap=False, batch_size=3),
    dict(loss="mse", reduction="mean", momentum=0.9, nesterov=False, weight_decay=0.0,
         accumulate_steps=3, overlap=False, batch_size=2),
    dict(loss="cross_entropy", reduction="mean", momentum=0.9, nesterov=True,
         weight_decay=0.0, accumulate_steps=1, overlap=True, batch_size=5),
]
for i, c in enumerate(CASES):
    c.update(n=46, data_seed=10 + i, init_seed=20 + i, lr=0.05, epochs=3)


def expected_params(case, n_ranks, max_steps=None):
    """Single-process train_step on the union of the ranks' k-th global batches."""
    net, x, y = problem(case)
    shards = [(x[s], y[s]) for s in (D.shard(len(x), FakeComm(r, n_ranks))
                                     for r in range(n_ranks))]
    b, k = case["batch_size"], case["accumulate_steps"]
    steps = math.ceil(max(math.ceil(len(sx) / b) for sx, _ in shards) / k)
    done = 0
    for _ in range(case["epochs"]):
        for step in range(steps):
            rows = slice(step * k * b, (step + 1) * k * b)
            xb = np.concatenate([sx[rows] for sx, _ in shards])
            yb = np.concatenate([sy[rows] for _, sy in shards])
            if max_steps is not None and done == max_steps:
                return net.parameters.copy()
            net.train_step(xb, yb, lr=case["lr"], momentum=case["momentum"],
                           weight_decay=case["weight_decay"], nesterov=case["nesterov"])
            done += 1
    return net.parameters.copy()


EQUIVALENCE_JOB = PRELUDE + """
cases = json.loads(sys.argv[1])
out = {}
for i, case in enumerate(cases):
    net, x, y = problem(case)
    rows = D.shard(len(x), comm)
    D.fit(net, x[rows], y[rows], epochs=case["epochs"], batch_size=case["batch_size"],
          lr=case["lr"], momentum=case["momentum"], weight_decay=case["weight_decay"],
          nesterov=case["nesterov"], shuffle=False, accumulate_steps=case["accumulate_steps"],
          overlap=case["overlap"], verify=True)
    out[f"case{i}"] = net.parameters
if rank == 0:
    np.savez("result.npz", **out)
"""


# ---------------------------------------------------------------------------
# Without a launcher: sharding, loading, the 1-rank path
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 5, 6, 7, 100])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_shard_tiles_rows_with_sizes_equal_up_to_one(n, size):
    slices = [D.shard(n, FakeComm(r, size)) for r in range(size)]
    covered = np.concatenate([np.arange(n)[s] for s in slices])
    np.testing.assert_array_equal(covered, np.arange(n))
    lengths = [s.stop - s.start for s in slices]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == sorted(lengths, reverse=True)


def test_shard_rejects_bad_counts():
    with pytest.raises(ValueError, match="n_samples"):
        D.shard(-1, FakeComm(0, 1))
    with pytest.raises(TypeError, match="n_samples"):
        D.shard(2.5, FakeComm(0, 1))


def test_open_array_maps_npy_and_stored_npz_and_reads_compressed(tmp_path):
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    y = np.arange(20)
    np.save(tmp_path / "t.npy", x)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "c.npz", x=x, y=y)
    a = D.open_array(tmp_path / "t.npy")
    b = D.open_array(str(tmp_path / "d.npz"), "x")
    c = D.open_array(str(tmp_path / "c.npz"), "y")
    assert isinstance(a, np.memmap) and isinstance(b, np.memmap)
    np.testing.assert_array_equal(a, x)
    np.testing.assert_array_equal(b, x)
    np.testing.assert_array_equal(D.open_array(str(tmp_path / "d.npz"), "y"), y)
    np.testing.assert_array_equal(c, y)
    with pytest.raises(KeyError, match="no array named 'z'"):
        D.open_array(str(tmp_path / "d.npz"), "z")
    with pytest.raises(ValueError, match="key"):
        D.open_array(str(tmp_path / "d.npz"))


def test_load_shard_returns_this_ranks_rows(tmp_path):
    x = np.arange(70, dtype=np.float64).reshape(10, 7)
    y = np.arange(10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.save(tmp_path / "t.npy", np.column_stack([x, y]))
    for r in range(3):
        rows = D.shard(10, FakeComm(r, 3))
        xs, ys = D.load_shard(str(tmp_path / "d.npz"), FakeComm(r, 3))
        np.testing.assert_array_equal(xs, x[rows])
        np.testing.assert_array_equal(ys, y[rows])
        xt, yt = D.load_shard(str(tmp_path / "t.npy"), FakeComm(r, 3))
        np.testing.assert_array_equal(xt, x[rows])
        np.testing.assert_array_equal(yt, y[rows])


def test_split_step_equals_fused_gradient_bitwise(dtype):
    rng = np.random.default_rng(3)
    net = MLP([7, 9, 6, 4], activation="relu", loss="cross_entropy", dtype=dtype, seed=1)
    x = rng.standard_normal((11, 7)).astype(dtype)
    y = rng.integers(0, 4, 11)
    fused = np.zeros(net.n_params, dtype)
    split = np.zeros(net.n_params + 4, dtype)
    status, loss = net.core.loss_and_grad(net.parameters, x, y, fused)
    status2, loss2 = net.core.loss_and_grad_begin(net.parameters, x, y)
    assert (status, loss) == (status2, loss2)
    for layer in (2, 1, 0):
        assert net.core.backward_layer(net.parameters, x, split, layer) == 0
    np.testing.assert_array_equal(split[:net.n_params], fused)
    with pytest.raises(ValueError, match="follow loss_and_grad_begin"):
        net.core.backward_layer(net.parameters, x, split, 0)
    net.core.loss_and_grad_begin(net.parameters, x, y)
    with pytest.raises(ValueError, match="expected layer 2"):
        net.core.backward_layer(net.parameters, x, split, 1)


def test_one_rank_equals_mlp_fit_bitwise():
    # In a fresh interpreter: MPI starts as a singleton there, not in pytest.
    out = run_python("""
        import numpy as np
        from bpcore import MLP, distributed as D
        rng = np.random.default_rng(0)
        x = rng.standard_normal((203, 20))
        checks = []
        for loss, y in (("cross_entropy", rng.integers(0, 5, 203)),
                        ("mse", rng.standard_normal((203, 5)))):
            for dtype in ("float32", "float64"):
                xx = x.astype(dtype)
                yy = y.astype(dtype) if loss == "mse" else y
                a = MLP([20, 16, 8, 5], loss=loss, dtype=dtype, seed=1)
                ha = a.fit(xx, yy, epochs=3, batch_size=32, lr=0.05, momentum=0.9, seed=7)
                for epoch_loop in (True, False):  # the compiled loop and the step path
                    D._EPOCH_LOOP_AT_ONE_RANK = epoch_loop
                    b = MLP([20, 16, 8, 5], loss=loss, dtype=dtype, seed=1)
                    hb = D.fit(b, xx, yy, epochs=3, batch_size=32, lr=0.05, momentum=0.9,
                               seed=7)
                    checks.append(np.array_equal(a.parameters, b.parameters))
                    checks.append(ha["loss"] == hb["loss"])
        print(all(checks), len(checks))
    """, OMP_NUM_THREADS="1")
    assert out == "True 16"


def test_reference_backend_runs_the_same_steps():
    out = run_python("""
        import numpy as np
        from bpcore import MLP, distributed as D
        rng = np.random.default_rng(1)
        x, y = rng.standard_normal((30, 4)), rng.standard_normal((30, 2))
        a = MLP([4, 5, 2], seed=2, dtype="float64")
        b = MLP([4, 5, 2], seed=2, dtype="float64", backend="reference")
        D.fit(a, x, y, epochs=2, batch_size=7, lr=0.1, accumulate_steps=2, seed=3)
        D.fit(b, x, y, epochs=2, batch_size=7, lr=0.1, accumulate_steps=2, seed=3)
        print(np.abs(a.parameters - b.parameters).max() < 1e-12)
    """)
    assert out == "True"


# ---------------------------------------------------------------------------
# Under mpiexec
# ---------------------------------------------------------------------------

@needs_mpiexec
@pytest.mark.parametrize("n_ranks", [2, 3])
def test_equivalence_with_single_process_steps(n_ranks):
    with tempfile.TemporaryDirectory() as cwd:
        run_mpi(n_ranks, EQUIVALENCE_JOB, cwd, argv=[json.dumps(CASES)])
        with np.load(os.path.join(cwd, "result.npz")) as result:
            got = {k: result[k] for k in result.files}
    for i, case in enumerate(CASES):
        want = expected_params(case, n_ranks)
        scale = np.abs(want).max()
        err = np.abs(got[f"case{i}"] - want).max() / scale
        assert err <= 1e-12, (i, case, err)


DETERMINISM_JOB = PRELUDE + """
case = dict(loss="cross_entropy", reduction="mean", n=61, data_seed=1, init_seed=2)
net, x, y = problem(case)
rows = D.shard(len(x), comm)
hist = D.fit(net, x[rows], y[rows], epochs=3, batch_size=4, lr=0.1, momentum=0.9, seed=5,
             verify=True)
if rank == 0:
    np.savez("result.npz", params=net.parameters, loss=np.array(hist["loss"]))
"""


@needs_mpiexec
def test_shuffled_runs_are_bitwise_reproducible():
    results = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as cwd:
            run_mpi(2, DETERMINISM_JOB, cwd)
            with np.load(os.path.join(cwd, "result.npz")) as r:
                results.append((r["params"], r["loss"]))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert np.isfinite(results[0][0]).all()


FAULT_JOB = PRELUDE + """
case = dict(loss="mse", reduction="mean", n=64, data_seed=4, init_seed=5)
net, x, y = problem(case)
rows = D.shard(len(x), comm)
xs, ys = x[rows].copy(), y[rows].copy()
mode = sys.argv[1]
if mode == "nan" and rank == 1:
    xs[9] = np.nan                      # local batch 2 (rows 8..11)
if mode == "raise" and rank == 1:
    class Failing:                      # the fused step raising on its third call
        def __init__(self, core):
            self.core, self.calls = core, 0
        def __getattr__(self, name):
            return getattr(self.core, name)
        def loss_and_grad(self, *args):
            self.calls += 1
            if self.calls == 3:
                raise MemoryError("simulated failure")
            return self.core.loss_and_grad(*args)
    net._core = Failing(net._core)
try:
    D.fit(net, xs, ys, epochs=2, batch_size=4, lr=0.05, momentum=0.9, shuffle=False)
except (FloatingPointError, MemoryError) as exc:
    hashes = comm.allgather(net.parameters.tobytes())
    with open(f"rank{rank}.txt", "w") as f:  # a file per rank: stdout lines may interleave
        f.write(f"raised {type(exc).__name__}: {exc} | same={len(set(hashes)) == 1}")
    if rank == 0:
        np.save("params.npy", net.parameters)
    sys.exit(3)
"""


@needs_mpiexec
@pytest.mark.parametrize("mode", ["nan", "raise"])
def test_fault_on_one_rank_raises_on_every_rank_at_that_step(mode):
    case = dict(loss="mse", reduction="mean", n=64, data_seed=4, init_seed=5, batch_size=4,
                accumulate_steps=1, epochs=1, lr=0.05, momentum=0.9, weight_decay=0.0,
                nesterov=False)
    with tempfile.TemporaryDirectory() as cwd:
        started = time.monotonic()
        res = run_mpi(2, FAULT_JOB, cwd, argv=[mode], check=False, timeout=30)
        elapsed = time.monotonic() - started
        params = np.load(os.path.join(cwd, "params.npy"))
        lines = []
        for r in range(2):
            with open(os.path.join(cwd, f"rank{r}.txt")) as f:
                lines.append(f.read())
    assert res.returncode != 0
    assert elapsed < 20
    kind = "FloatingPointError" if mode == "nan" else "MemoryError"
    for line in lines:
        assert f"raised {kind}: epoch 0, step 2: rank 1" in line, line
        assert "same=True" in line
    # The parameters are those after steps 0 and 1, never touched by step 2.
    np.testing.assert_allclose(params, expected_params(case, 2, max_steps=2), rtol=1e-12,
                               atol=1e-15)


CHECKPOINT_JOB = PRELUDE + """
mode, drop = sys.argv[1], float(sys.argv[2])
case = dict(loss="cross_entropy", reduction="mean", n=50, data_seed=6, init_seed=7,
            dropout=drop)
net, x, y = problem(case)
rows = D.shard(len(x), comm)
settings = dict(epochs=5, batch_size=4, lr=0.1, momentum=0.9, seed=11,
                validation_data=(x[rows][:5], y[rows][:5]))
if mode == "full":
    hist = D.fit(net, x[rows], y[rows], **settings)
elif mode == "interrupted":
    # Checkpoint after epoch 2 (every 2); the callback then stops after epoch 3,
    # so the file is one epoch behind the end, as after a crash.
    hist = D.fit(net, x[rows], y[rows], checkpoint="ckpt.npz", checkpoint_every=2,
                 callback=lambda epoch, logs: epoch < 2, **settings)
else:
    # Another model of the same shape (another seed: other weights, another
    # dropout key): the checkpoint must bring back all of it.
    other = MLP([7, 9, 6, 4], activation="tanh", loss="cross_entropy", dtype="float64",
                seed=99, dropout=drop)
    net = other
    hist = D.fit(net, x[rows], y[rows], resume="ckpt.npz", **settings)
if rank == 0:
    np.savez(f"{mode}.npz", params=net.parameters, loss=np.array(hist["loss"]),
             val_loss=np.array(hist["val_loss"]))
"""


@needs_mpiexec
@pytest.mark.parametrize("dropout", ["0.0", "0.3"])
def test_checkpoint_resume_reproduces_the_uninterrupted_run_bitwise(dropout):
    with tempfile.TemporaryDirectory() as cwd:
        run_mpi(2, CHECKPOINT_JOB, cwd, argv=["full", dropout])
        run_mpi(2, CHECKPOINT_JOB, cwd, argv=["interrupted", dropout])
        saved = MLP.load(os.path.join(cwd, "ckpt.npz"))  # a checkpoint is a model file
        from bpcore import _modelfile
        extra = _modelfile.load(os.path.join(cwd, "ckpt.npz"))["extra"]
        run_mpi(2, CHECKPOINT_JOB, cwd, argv=["resumed", dropout])
        full = dict(np.load(os.path.join(cwd, "full.npz")))
        cut = dict(np.load(os.path.join(cwd, "interrupted.npz")))
        resumed = dict(np.load(os.path.join(cwd, "resumed.npz")))
        res = run_mpi(3, CHECKPOINT_JOB, cwd, argv=["resumed", dropout], check=False)
    assert int(extra["epoch"]) == 2 and extra["rng_states"].shape == (2,)
    assert extra["velocity"].shape == (saved.n_params,)
    # 50 rows on 2 ranks in batches of 4: 7 steps an epoch, 2 epochs.
    assert ("dropout_step" in extra) == (dropout != "0.0")
    if dropout != "0.0":
        assert int(extra["dropout_step"]) == 14
    assert len(cut["loss"]) == 3
    assert not np.array_equal(cut["params"], full["params"])
    for key in ("params", "loss", "val_loss"):
        np.testing.assert_array_equal(resumed[key], full[key])
    assert res.returncode != 0 and "written by 2 ranks" in res.stderr + res.stdout


@needs_mpiexec
def test_disagreeing_ranks_raise_everywhere_instead_of_hanging():
    code = PRELUDE + """
net = MLP([3, 2], dtype="float64", seed=0)
x = np.zeros((4, 3))
y = np.zeros((4, 2))
try:
    D.fit(net, x, y, epochs=1, batch_size=2 + rank, lr=0.1)
except ValueError as exc:
    print(f"rank {rank}: {exc}", flush=True)
try:
    D.fit(net, x if rank == 0 else np.zeros((4, 5)), y, epochs=1, batch_size=2, lr=0.1)
except ValueError as exc:
    print(f"rank {rank}: {exc}", flush=True)
"""
    with tempfile.TemporaryDirectory() as cwd:
        res = run_mpi(2, code, cwd, timeout=30)
    # NOTE: counted, not split into lines: the ranks' output may interleave.
    assert res.stdout.count("ranks disagree on `batch_size`") == 2, res.stdout
    assert res.stdout.count("rank 1: `x` must have shape") == 2, res.stdout


@needs_mpiexec
def test_cli_trains_data_parallel_with_output_from_rank_zero():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((90, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    with tempfile.TemporaryDirectory() as cwd:
        np.savez(os.path.join(cwd, "data.npz"), x=x, y=y)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        res = subprocess.run(
            [MPIEXEC, "-n", "2", sys.executable, "-m", "bpcore", "train", "data.npz",
             "--task", "classification", "--hidden", "16", "--epochs", "3", "--lr", "0.1",
             "--standardize", "--quiet", "--out", "model.npz"],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        net = MLP.load(os.path.join(cwd, "model.npz"))
    assert res.stdout.count("epoch") == 3, res.stdout
    assert res.stdout.count("model saved") == 1
    assert "2 ranks" in res.stderr
    assert net.layer_sizes == [6, 16, 4]


# ---------------------------------------------------------------------------
# The ranks boundary: a fault on any one rank (or all) is the same exception on
# every rank, within seconds, never a hang
# ---------------------------------------------------------------------------

FAULTS_JOB = PRELUDE + """
import os, signal, time
from bpcore import _modelfile

case = dict(loss="mse", reduction="mean", n=64, data_seed=4, init_seed=5)
SETTINGS = dict(epochs=2, batch_size=4, lr=0.05, momentum=0.9, shuffle=False)

class Oops(Exception):
    pass

def on_term(signum, frame):
    raise SystemExit(3)

def on_alarm(signum, frame):
    raise TimeoutError("watchdog")

signal.signal(signal.SIGTERM, on_term)

class Faulty:
    # The model's core, doing `act` at its third loss_and_grad call (step 2).
    def __init__(self, core, act):
        self.core, self.act, self.calls = core, act, 0
    def __getattr__(self, name):
        return getattr(self.core, name)
    def _call(self, name, args):
        self.calls += 1
        if self.calls == 3:
            self.act()
        return getattr(self.core, name)(*args)
    def loss_and_grad(self, *args):
        return self._call("loss_and_grad", args)
    def loss_and_grad_begin(self, *args):  # overlap=True
        return self._call("loss_and_grad_begin", args)

def memory_error():
    raise MemoryError("simulated failure")

def stop_callback(epoch, logs):
    raise Oops("the callback failed")

def alarm_callback(epoch, logs):
    if epoch == 0:  # a handler installed during fit, firing in a later step
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.003)

def kill(sig):
    return lambda *args: os.kill(os.getpid(), sig)

def problem_shard():
    net, x, y = problem(case)
    rows = D.shard(len(x), comm)
    return net, x[rows].copy(), y[rows].copy()

# A good checkpoint, and rank 0 spoils copies of it.
net, xs, ys = problem_shard()
D.fit(net, xs, ys, checkpoint="good.npz", **dict(SETTINGS, epochs=1))
if rank == 0:
    entries = _modelfile.load("good.npz")
    model = {k: entries[k] for k in ("layer_sizes", "activations", "loss", "reduction",
                                     "dtype", "params")}
    def spoil(name, **changes):
        extra = dict(entries["extra"], **changes)
        _modelfile.save(name, **model, extra={k: v for k, v in extra.items()
                                              if v is not None})
    states = [str(s) for s in entries["extra"]["rng_states"]]
    spoil("short-rng.npz", rng_states=np.array(states[:-1]))
    for r in range(size):
        spoil(f"bad-json-{r}.npz",
              rng_states=np.array([s[:-5] if i == r else s for i, s in enumerate(states)]))
        spoil(f"bad-state-{r}.npz", rng_states=np.array(
            ['{"bit_generator": "MT19937"}' if i == r else s for i, s in enumerate(states)]))
    spoil("scalar-velocity.npz", velocity=np.float64(0.5))
    spoil("bad-dropout.npz", dropout_key=np.uint64(5), dropout_step=np.float64(-1.5))
    with open("unreadable.npz", "wb") as f:
        f.write(open("good.npz", "rb").read()[:300])
    np.savez("data.npz", x=np.zeros((10, 7)), y=np.zeros((10, 4)))
comm.Barrier()

def run(fault, r, net, xs, ys):
    kw = dict(SETTINGS)
    me = r == "all" or rank == r
    if fault == "loader":
        with D.agreement("loading the data", comm):
            if me:
                raise OSError(f"shard {rank} is gone")
        return
    if fault == "load_shard":
        D.load_shard("missing.npz" if me else "data.npz", comm)
        return
    if fault == "argument" and me:
        kw["lr"] = -1.0
    if fault == "checkpoint=123":
        kw["checkpoint"] = 123 if me else "c.npz"
    if fault == "resume=123":
        kw["resume"] = 123 if me else "good.npz"
    if fault in ("missing", "unreadable", "short-rng", "scalar-velocity", "bad-dropout"):
        kw["resume"] = fault + ".npz"
    if fault in ("bad-json", "bad-state"):
        kw["resume"] = f"{fault}-{r}.npz"
    if fault == "checkpoint-write":
        kw["checkpoint"] = "no-such-dir/c.npz"
    if fault == "nan" and me:
        xs[9] = np.nan  # local batch 2
    if fault in ("compute", "compute-overlap") and me:
        net._core = Faulty(net._core, memory_error)
    if fault in ("compute-overlap", "sigterm-overlap"):
        kw["overlap"] = True
    if fault == "callback":
        kw["callback"] = stop_callback if me else (lambda epoch, logs: None)
    if fault in ("sigterm-step", "sigterm-overlap", "sigint-step") and me:
        net._core = Faulty(net._core, kill(signal.SIGINT if fault == "sigint-step"
                                           else signal.SIGTERM))
    if fault == "sigterm-callback":
        kw["callback"] = kill(signal.SIGTERM) if me else (lambda epoch, logs: None)
    if fault == "alarm":
        kw.update(epochs=10 ** 6, callback=alarm_callback if me else (lambda e, l: None))
    D.fit(net, xs, ys, **kw)

PARAMS_AFTER_TWO_STEPS = ("nan", "compute", "compute-overlap", "sigterm-step",
                          "sigterm-overlap", "sigint-step")
faults = json.loads(sys.argv[1])
params = {}
with open(f"rank{rank}.jsonl", "w") as out:
    for fault, targets in faults:
        for r in targets:
            comm.Barrier()
            started = time.monotonic()
            got = {"fault": fault, "rank": r, "raised": None}
            net, xs, ys = problem_shard()
            try:
                run(fault, r, net, xs, ys)
            except BaseException as exc:
                got["raised"] = type(exc).__name__
                got["message"] = (f"code {exc.code!r}: {exc.__notes__}"
                                  if isinstance(exc, SystemExit) else str(exc))
            got["seconds"] = time.monotonic() - started
            got["handlers_restored"] = (signal.getsignal(signal.SIGTERM) is on_term
                                        and signal.getsignal(signal.SIGINT)
                                        is signal.default_int_handler)
            if fault in PARAMS_AFTER_TWO_STEPS:
                got["same_params"] = len(set(comm.allgather(net.parameters.tobytes()))) == 1
                params[f"{fault}-{r}"] = net.parameters
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            out.write(json.dumps(got) + "\\n")
            out.flush()
if rank == 0:
    np.savez("params.npz", **params)
comm.Barrier()
if sys.argv[2:] == ["exit"]:  # uncaught, a fault ends every rank with the handler's code
    net, xs, ys = problem_shard()
    D.fit(net, xs, ys, **dict(SETTINGS, callback=kill(signal.SIGTERM) if rank == size - 1
                              else (lambda epoch, logs: None)))
"""

# fault -> (exception on every rank, the rank the message names: None = the one injected)
FAULTS = {
    "loader": ("OSError", None), "load_shard": ("FileNotFoundError", None),
    "argument": ("ValueError", None), "checkpoint=123": ("TypeError", None),
    "resume=123": ("TypeError", None), "missing": ("FileNotFoundError", 0),
    "unreadable": ("ValueError", 0), "short-rng": ("ValueError", 0),
    "scalar-velocity": ("ValueError", 0), "bad-dropout": ("ValueError", 0),
    "bad-json": ("ValueError", 0),
    "bad-state": ("ValueError", None), "checkpoint-write": ("FileNotFoundError", 0),
    "nan": ("FloatingPointError", None), "compute": ("MemoryError", None),
    "compute-overlap": ("MemoryError", None), "sigterm-overlap": ("SystemExit", None),
    "callback": ("RuntimeError", None), "sigterm-step": ("SystemExit", None),
    "sigint-step": ("KeyboardInterrupt", None), "sigterm-callback": ("SystemExit", None),
    "alarm": ("TimeoutError", None),
}
ONCE = ("missing", "unreadable", "short-rng", "scalar-velocity", "bad-dropout",
        "checkpoint-write")
MESSAGES = {
    "loader": "loading the data: rank {r}: shard {r} is gone",
    "load_shard": "missing.npz", "argument": "rank {r}: `lr`",
    "checkpoint=123": "rank {r}: `checkpoint` must be a path",
    "resume=123": "rank {r}: `resume` must be a path", "missing": "missing.npz",
    "unreadable": "'unreadable.npz' is not a readable bpcore model file",
    "short-rng": "extra/rng_states must be {n} strings",
    "scalar-velocity": "extra/velocity must be float64 of shape",
    "bad-dropout": "extra/dropout_key and extra/dropout_step must both be integers >= 0; "
                   "got extra/dropout_step",
    "bad-json": "rank 0: 'bad-json-{t}.npz': extra/rng_states[{t}] is not valid JSON",
    "bad-state": "rank {r}: 'bad-state-{r}.npz': extra/rng_states[{r}] is not a state",
    "checkpoint-write": "writing the checkpoint after epoch 1: rank 0: 'no-such-dir/c.npz'",
    "nan": "epoch 0, step 2: rank {r}: non-finite loss",
    "compute": "epoch 0, step 2: rank {r}: simulated failure",
    "compute-overlap": "epoch 0, step 2: rank {r}: simulated failure",
    "sigterm-overlap": "code 3: ['epoch 0, step 2: rank {r}: SystemExit(3)",
    "callback": "callback after epoch 0: rank {r}: Oops: the callback failed",
    "sigterm-step": "code 3: ['epoch 0, step 2: rank {r}: SystemExit(3)",
    "sigint-step": "epoch 0, step 2: rank 0: KeyboardInterrupt",
    "sigterm-callback": "code 3: ['callback after epoch 0: rank {r}: SystemExit(3)",
    "alarm": "rank {r}: watchdog",
}


@needs_mpiexec
@pytest.mark.parametrize("n_ranks", [2, 3])
def test_every_fault_on_any_rank_is_the_same_exception_on_every_rank(n_ranks):
    # One launch runs every fault in turn (a launch costs ~1 s).
    check_faults(n_ranks, list(FAULTS))


def check_faults(n_ranks, faults, exit_code=True):
    """Inject each of ``faults`` on each rank in turn (or where it can only be) and check;
    with ``exit_code``, end with an uncaught SystemExit(3) from the last rank's handler."""
    plan = [(f, [0] if f in ONCE else ["all"] if f == "sigint-step" else list(range(n_ranks)))
            for f in faults]
    with tempfile.TemporaryDirectory() as cwd:
        try:
            res = run_mpi(n_ranks, FAULTS_JOB, cwd, argv=[json.dumps(plan)] + ["exit"] * exit_code,
                          check=False,
                          timeout=120)
        except subprocess.TimeoutExpired:
            res = None
        records = []
        for r in range(n_ranks):
            path = os.path.join(cwd, f"rank{r}.jsonl")
            with open(path) if os.path.exists(path) else open(os.devnull) as f:
                records.append([json.loads(line) for line in f])
        if res is None:
            done = [f"{g['fault']}@{g['rank']}" for g in records[0]]
            pytest.fail(f"the job hung after {done}")
        params = dict(np.load(os.path.join(cwd, "params.npz")))
    assert res.returncode == (3 if exit_code else 0), res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert len({len(rec) for rec in records}) == 1
    assert len(records[0]) == sum(len(targets) for _, targets in plan)
    case = dict(loss="mse", reduction="mean", n=64, data_seed=4, init_seed=5, batch_size=4,
                accumulate_steps=1, epochs=2, lr=0.05, momentum=0.9, weight_decay=0.0,
                nesterov=False)
    after_two_steps = expected_params(case, n_ranks, max_steps=2)
    for got in zip(*records):
        fault, target = got[0]["fault"], got[0]["rank"]
        kind, named = FAULTS[fault]
        named = target if named is None else named
        want = MESSAGES[fault].format(r=named, t=target, n=n_ranks)
        where = f"{fault} injected on rank {target}: {got}"
        assert all(g["raised"] == kind for g in got), where
        assert len({g["message"] for g in got}) == 1, where
        assert want in got[0]["message"], where
        assert all(g["seconds"] < 10 for g in got), where
        assert all(g["handlers_restored"] for g in got), where
        if "same_params" in got[0]:
            assert all(g["same_params"] for g in got), where
            np.testing.assert_allclose(params[f"{fault}-{target}"], after_two_steps,
                                       rtol=1e-12, atol=1e-15, err_msg=where)


def test_one_rank_signal_handlers_raise_as_in_plain_python():
    out = run_python("""
        import os, signal
        import numpy as np
        from bpcore import MLP, distributed as D
        def on_alarm(signum, frame):
            raise TimeoutError("watchdog")
        def on_term(signum, frame):
            raise SystemExit(3)
        signal.signal(signal.SIGALRM, on_alarm)
        signal.signal(signal.SIGTERM, on_term)
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((64, 5)), rng.standard_normal((64, 2))
        seen = []
        for epoch_loop in (True, False):  # the compiled loop and the step path
            D._EPOCH_LOOP_AT_ONE_RANK = epoch_loop
            net = MLP([5, 8, 2], dtype="float64", seed=0)
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            try:
                D.fit(net, x, y, epochs=10 ** 6, batch_size=8, lr=0.01)
            except TimeoutError as exc:
                seen.append(("TimeoutError", "watchdog" in str(exc)))
            net = MLP([5, 8, 2], dtype="float64", seed=0)
            try:
                D.fit(net, x, y, epochs=3, batch_size=8, lr=0.01,
                      callback=lambda e, logs: os.kill(os.getpid(), signal.SIGTERM))
            except SystemExit as exc:
                seen.append(("SystemExit", exc.code))
            seen.append(bool(np.isfinite(net.parameters).all())
                        and signal.getsignal(signal.SIGTERM) is on_term)
        print(seen)
    """)
    assert out == str([("TimeoutError", True), ("SystemExit", 3), True] * 2)


def test_missing_mpi4py_gives_the_install_hint():
    res = run_python("""
        import sys
        from importlib.abc import MetaPathFinder

        class Absent(MetaPathFinder):  # as if mpi4py were not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "mpi4py":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, Absent())
        import bpcore.distributed
    """, check=False)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: bpcore.distributed needs mpi4py"), last
    assert "pip install 'bpcore[mpi]'" in last and "No module named 'mpi4py'" in last
    assert "During handling" not in res.stderr  # one error, not a chain



@needs_mpiexec
def test_dropout_ranks_draw_their_own_masks_and_must_agree_on_the_model():
    code = PRELUDE + """
from bpcore import reference_core
rng = np.random.default_rng(rank)
x, y = rng.normal(size=(16, 4)), rng.normal(size=(16, 2))
net = MLP([4, 8, 2], activation="gelu", dropout=0.5, dtype="float64", seed=3)
D.fit(net, x, y, epochs=2, batch_size=4, lr=0.05, shuffle=False)
seeds = comm.allgather(net.core.dropout_seed)
params = comm.allgather(net.parameters.copy())
print(f"rank {rank}: distinct {len(set(seeds)) == size}, "
      f"same params {all(np.array_equal(p, params[0]) for p in params)}", flush=True)
other = MLP([4, 8, 2], activation="gelu", dropout=0.5 if rank == 0 else 0.25,
            dtype="float64", seed=3)
try:
    D.fit(other, x, y, epochs=1, batch_size=4, lr=0.05)
except ValueError as exc:
    print(f"rank {rank}: {exc}", flush=True)
"""
    with tempfile.TemporaryDirectory() as cwd:
        res = run_mpi(2, code, cwd, timeout=60)
    assert res.stdout.count("distinct True, same params True") == 2, res.stdout
    assert res.stdout.count("ranks disagree on `dropout`") == 2, res.stdout
