"""Processes: bpcore works in child processes, whatever the parent did before.

Promises tested here, each after THREADED work in the parent (a GEMM,
``MLP.fit`` and a ``bpcore.sklearn.MLPClassifier`` fit on 2 OpenMP threads):

* children started by multiprocessing's ``fork``, ``forkserver`` (its server
  preloading bpcore) and ``spawn`` (a ``Process`` each, and a ``Pool`` of 2
  under fork and forkserver) finish a GEMM, an ``MLP.fit`` and an estimator
  fit, with results bitwise equal to the parent's serial ones;
* a fork child runs on one thread and says so (``get_num_threads() == 1``,
  ``set_num_threads`` kept but not used); ``spawn`` / ``forkserver`` children
  (fresh interpreters) use the threads they are given;
* ``os.fork()`` directly: the child and a grandchild finish; a child forked
  BEFORE the parent ever used threads keeps its threads;
* ``GridSearchCV(..., n_jobs=2)`` on joblib's default loky backend finishes
  and matches ``n_jobs=1``.

Every scenario runs in a fresh interpreter (``conftest.run_python``), and
every child in it is waited for at most ``CHILD_TIMEOUT`` seconds and then
killed, so a deadlock fails the test instead of freezing the run.  (Before the
fix in ``bpcore/_gemm/forksafe.h`` the ``fork`` cases hung in the child's first
threaded product: a thread pool does not survive fork -- libgomp's then, the
GEMM's own ``bpcore/_gemm/pool.h`` now, under the same rule.)
"""
import json

import pytest

from conftest import import_oracle, run_python

# Fork, forkserver and spawn pools: in CI (CI=true) and with --runslow; not in a
# plain local `pytest`, nor in the sanitizer rerun (.ci/sanitize).
pytestmark = pytest.mark.slow

CHILD_TIMEOUT = 60          # seconds per child; a normal run takes a few
SCRIPT_TIMEOUT = 300        # the whole fresh interpreter (a backstop)

# The work children do, as a module they can import (spawn and forkserver
# children unpickle functions by module name; a ``python -c`` script has none).
WORK_MODULE = '''
import hashlib
import json
import multiprocessing
import os
import select
import signal
import time
import traceback
import warnings

import numpy as np

from sklearn.exceptions import ConvergenceWarning

import bpcore
from bpcore import MLP
from bpcore.sklearn import MLPClassifier

# Sizes chosen so every product below takes the GEMM's threaded path
# (>= 96**3 multiply-adds, and >= 2**20 in the training step).
RNG = np.random.default_rng(0)
A = RNG.standard_normal((512, 512))
X = RNG.standard_normal((512, 64)).astype(np.float32)
LABELS = RNG.integers(0, 4, 512)


def digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def gemm():
    return digest(bpcore.matmul(A, A))


def mlp_fit():
    model = MLP([64, 256, 256, 4], loss="cross_entropy", seed=0)
    model.fit(X, LABELS, epochs=2, batch_size=128, lr=0.05, seed=0)
    return digest(model.parameters)


def estimator_fit():
    est = MLPClassifier(hidden_layer_sizes=(256,), max_iter=3, batch_size=128,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, LABELS)
    return digest(*est.coefs_, *est.intercepts_)


def bf16_fit():
    """compute_dtype="bfloat16": on an AMX CPU its tiles, whose state Linux grants per
    process (a fork child inherits the grant; a spawned one asks at import)."""
    model = MLP([64, 256, 4], loss="cross_entropy", seed=0, compute_dtype="bfloat16")
    model.fit(X, LABELS, epochs=2, batch_size=128, lr=0.05, seed=0)
    return digest(model.parameters, bpcore.matmul(X.T, X, compute_dtype="bfloat16"))


def work(threads=2):
    """The four results, after asking for ``threads`` threads."""
    bpcore.set_num_threads(threads)
    return {"threads": bpcore.get_num_threads(), "gemm": gemm(), "mlp": mlp_fit(),
            "estimator": estimator_fit(), "bf16": bf16_fit(),
            "bf16_path": bpcore.cpu_features()["bf16"]}


def _work_to(conn):
    conn.send(work())
    conn.close()


def in_process(ctx, timeout):
    """``work()`` in one ``ctx.Process``; killed after ``timeout`` s."""
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_work_to, args=(send,))
    p.start()
    send.close()
    try:
        if not recv.poll(timeout):
            raise TimeoutError(f"{ctx.get_start_method()} child: no result in {timeout} s")
        return recv.recv()
    finally:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()


def _pool_work(_):
    return work()


def in_pool(ctx, timeout):
    """``work()`` twice in a ``ctx.Pool(2)``; terminated after ``timeout`` s."""
    pool = ctx.Pool(2)
    try:
        return pool.map_async(_pool_work, range(2)).get(timeout)
    finally:
        pool.terminate()
        pool.join()


def in_os_fork(fn, timeout):
    """``fn()`` in a child made by ``os.fork()``; its JSON result, killed after ``timeout`` s."""
    r, w = os.pipe()
    with warnings.catch_warnings():     # Python >= 3.12 warns on fork with threads alive
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:                        # the child: never return into the caller
        code = 1
        try:
            os.close(r)
            os.write(w, json.dumps(fn()).encode())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                raise TimeoutError(f"os.fork child: no result in {timeout} s")
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b"null")


RESULTS = ("gemm", "mlp", "estimator", "bf16", "bf16_path")


def reference():
    """The parent's serial results, then the same work on 2 threads (which must agree)."""
    serial = work(threads=1)
    threaded = work(threads=2)
    assert threaded["threads"] == 2, threaded
    for key in RESULTS:
        assert threaded[key] == serial[key], key
    return serial
'''


@pytest.fixture
def workdir(tmp_path):
    """A directory holding the work module, for the children's PYTHONPATH."""
    import_oracle("sklearn")
    (tmp_path / "procwork.py").write_text(WORK_MODULE)
    return tmp_path


def _run(code, workdir):
    out = run_python(code, timeout=SCRIPT_TIMEOUT, PYTHONPATH=str(workdir))
    return json.loads(out.splitlines()[-1])


RESULTS = ("gemm", "mlp", "estimator", "bf16", "bf16_path")


def _same_results(got, ref):
    return {k: got[k] for k in RESULTS} == {k: ref[k] for k in RESULTS}


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_children_after_threaded_parent(workdir, method):
    res = _run(f"""
        import json, multiprocessing
        import procwork as W
        ref = W.reference()             # leaves the parent's OpenMP pool started
        ctx = multiprocessing.get_context({method!r})
        if {method!r} == "forkserver":  # the server imports bpcore (no threads yet)
            ctx.set_forkserver_preload(["procwork"])
        one = W.in_process(ctx, {CHILD_TIMEOUT})
        # A Pool of spawned workers is the same boundary again: not repeated.
        pool = W.in_pool(ctx, {CHILD_TIMEOUT}) if {method!r} != "spawn" else []
        print(json.dumps({{"ref": ref, "children": [one] + pool}}))
        """, workdir)
    # A fork child may not start OpenMP threads; fresh interpreters may.
    want_threads = 1 if method == "fork" else 2
    for child in res["children"]:
        assert _same_results(child, res["ref"]), (child, res["ref"])
        assert child["threads"] == want_threads, child


def test_os_fork(workdir):
    res = _run(f"""
        import json
        import bpcore
        import procwork as W
        # Forked before the parent used threads: the child may use them.
        bpcore.set_num_threads(2)
        early = W.in_os_fork(lambda: [bpcore.get_num_threads(), W.gemm()], {CHILD_TIMEOUT})
        ref = W.reference()
        late = W.in_os_fork(W.work, {CHILD_TIMEOUT})
        # A grandchild: forked from a fork child, serial as well.
        grand = W.in_os_fork(lambda: W.in_os_fork(W.work, {CHILD_TIMEOUT}), {CHILD_TIMEOUT})
        print(json.dumps({{"ref": ref, "early": early, "late": late, "grand": grand,
                           "parent_threads": bpcore.get_num_threads()}}))
        """, workdir)
    ref = res["ref"]
    assert res["early"] == [2, ref["gemm"]]
    for child in (res["late"], res["grand"]):
        assert _same_results(child, ref), (child, ref)
        assert child["threads"] == 1, child
    assert res["parent_threads"] == 2       # the parent keeps its threads


def test_grid_search_loky(workdir):
    res = _run("""
        import json, warnings
        import numpy as np
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import GridSearchCV
        from bpcore.sklearn import MLPClassifier
        import procwork as W
        W.reference()                   # threaded work first
        warnings.simplefilter("ignore", ConvergenceWarning)
        out = {}
        for n_jobs in (1, 2):           # 2: joblib's default (loky) worker processes
            gs = GridSearchCV(MLPClassifier(hidden_layer_sizes=(32,), max_iter=5,
                                            random_state=0),
                              {"alpha": [1e-4, 1e-1]}, cv=2, n_jobs=n_jobs)
            gs.fit(W.X[:200], W.LABELS[:200])
            out[n_jobs] = [gs.cv_results_["mean_test_score"].tolist(),
                           W.digest(*gs.best_estimator_.coefs_)]
        print(json.dumps(out))
        """, workdir)
    assert res["1"] == res["2"]
