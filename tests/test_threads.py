"""Threads: bpcore's kernels and training step release the GIL and are safe to call concurrently.

Promises tested here (the compiled backend unless stated):

* many threads calling ``predict`` (and the kernels) on shared, read-only
  data get bitwise the serial results;
* threads training their own models get bitwise the single-threaded weights;
* two threads training ONE model serialize on the model's lock: every step
  runs whole, so the result is that of some serial order of the steps;
* the long compiled calls (the GEMM, a forward pass, an epoch) do not hold
  the GIL, so other Python threads run meanwhile;
* results do not depend on the number of OpenMP threads of the GEMM.

The speed-up of two ``fit`` calls in two threads is a benchmark
(``bench/bench_threads.py``, ``python bench/run.py --only threads``), not a test.
"""
import threading

import numpy as np
import pytest

import bpcore
from bpcore import MLP

N_THREADS = 8


def _run_threads(target, n):
    """Run ``target(i)`` in ``n`` threads started together; re-raise the first error."""
    results, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def worker(i):
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 -- reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def _data(n=256, n_in=32, n_out=10, dtype=np.float32, seed=0, labels=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_in)).astype(dtype)
    y = rng.integers(0, n_out, size=n) if labels else rng.normal(size=(n, n_out)).astype(dtype)
    return x, y


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param


def test_predict_from_many_threads_is_serial(dtype):
    net = MLP([32, 64, 64, 10], activation="relu", loss="cross_entropy", dtype=dtype, seed=0)
    xs = [_data(n=97 + 31 * i, dtype=dtype, seed=i)[0] for i in range(N_THREADS)]
    serial = [net.predict(x) for x in xs]
    params = net.parameters.copy()
    for _ in range(3):
        got = _run_threads(lambda i: [net.predict(xs[i]) for _ in range(20)], N_THREADS)
        for i in range(N_THREADS):
            for g in got[i]:
                np.testing.assert_array_equal(g, serial[i])
    np.testing.assert_array_equal(net.parameters, params)


def test_evaluate_and_loss_and_grads_from_many_threads(dtype):
    net = MLP([32, 48, 10], activation="tanh", dtype=dtype, seed=1)
    data = [_data(n=64 + i, dtype=dtype, seed=i) for i in range(N_THREADS)]
    serial = [(net.evaluate(x, y), net.loss_and_grads(x, y)) for x, y in data]
    got = _run_threads(lambda i: (net.evaluate(*data[i]), net.loss_and_grads(*data[i])),
                       N_THREADS)
    for (ev, (loss, (gw, gb))), (ev2, (loss2, (gw2, gb2))) in zip(serial, got):
        assert ev == ev2 and loss == loss2
        for a, b in zip(gw + gb, gw2 + gb2):
            np.testing.assert_array_equal(a, b)


KERNEL_CALLS = {
    "matmul": lambda a, b: bpcore.matmul(a, b),
    "linear_forward": lambda a, b: bpcore.linear_forward(a, b, b[0]),
    "sigmoid_forward": lambda a, b: bpcore.sigmoid_forward(a),
    "softmax_forward": lambda a, b: bpcore.softmax_forward(a),
    "tanh_backward": lambda a, b: bpcore.tanh_backward(np.tanh(a), a),
}


@pytest.mark.parametrize("name", sorted(KERNEL_CALLS))
def test_kernels_from_many_threads_are_serial(name, dtype):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(300, 300)).astype(dtype)  # large enough to run without the GIL
    b = rng.normal(size=(300, 300)).astype(dtype)
    call = KERNEL_CALLS[name]
    serial = call(a, b)
    got = _run_threads(lambda i: [call(a, b) for _ in range(5)], N_THREADS)
    for results in got:
        for r in results:
            np.testing.assert_array_equal(r, serial)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_independent_models_in_threads_train_like_one_thread(loss, dtype):
    def train(i):
        x, y = _data(n=200, dtype=dtype, seed=i, labels=loss == "cross_entropy")
        net = MLP([32, 40, 10], activation="relu", loss=loss, dtype=dtype, seed=i)
        net.fit(x, y, epochs=3, batch_size=16, lr=0.05, momentum=0.9, seed=i)
        for _ in range(5):
            net.train_step(x[:32], y[:32], lr=0.01)
        return net.parameters.copy()

    serial = [train(i) for i in range(4)]
    threaded = _run_threads(train, 4)
    for s, t in zip(serial, threaded):
        np.testing.assert_array_equal(t, s)


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_two_threads_training_one_model_serialize(backend, momentum, dtype):
    # Every step applies the same batch, so whatever order the lock gives the
    # steps, the result is that of 2 * STEPS serial steps -- bitwise, unless a
    # step saw the parameters or the momentum half-way through another.
    steps = 100 if backend == "compiled" else 15
    x, y = _data(n=256, dtype=dtype, seed=3)

    def fresh():
        return MLP([32, 256, 10], activation="tanh", dtype=dtype, seed=4, backend=backend)

    serial = fresh()
    for _ in range(2 * steps):
        serial.train_step(x, y, lr=0.01, momentum=momentum)
    shared = fresh()
    losses = _run_threads(lambda i: [shared.train_step(x, y, lr=0.01, momentum=momentum)
                                     for _ in range(steps)], 2)
    np.testing.assert_array_equal(shared.parameters, serial.parameters)
    # The 2 * STEPS losses are those of the serial run, interleaved in some order.
    serial_losses = []
    replay = fresh()
    for _ in range(2 * steps):
        serial_losses.append(replay.train_step(x, y, lr=0.01, momentum=momentum))
    assert sorted(losses[0] + losses[1]) == sorted(serial_losses)


def test_two_threads_fitting_one_model_serialize_by_epoch(dtype):
    # fit holds the lock for one epoch at a time: with shuffle=False every
    # epoch is the same operation, so any interleaving equals 2 * E epochs.
    x, y = _data(n=512, dtype=dtype, seed=5, labels=True)

    def fresh():
        return MLP([32, 128, 10], activation="relu", loss="cross_entropy", dtype=dtype, seed=6)

    serial = fresh()
    serial.fit(x, y, epochs=20, batch_size=64, lr=0.01, momentum=0.5, shuffle=False)
    shared = fresh()
    _run_threads(lambda i: shared.fit(x, y, epochs=10, batch_size=64, lr=0.01, momentum=0.5,
                                      shuffle=False), 2)
    np.testing.assert_array_equal(shared.parameters, serial.parameters)


def test_training_and_predicting_one_model_never_crashes(dtype):
    # predict takes no lock: while another thread trains, it sees the
    # parameters of some moment (possibly mid-update) -- finite, right shape.
    x, y = _data(n=128, dtype=dtype, seed=7)
    net = MLP([32, 64, 10], activation="sigmoid", dtype=dtype, seed=8)

    def work(i):
        if i == 0:
            net.fit(x, y, epochs=5, batch_size=8, lr=0.01)
            return None
        return [net.predict(x) for _ in range(30)]

    for outs in _run_threads(work, 4)[1:]:
        for out in outs:
            assert out.shape == (128, 10) and np.isfinite(out).all()


def _other_thread_progress(call):
    """How many Python loop iterations another thread ran while ``call()`` was inside C."""
    state = {"inside": False, "done": False, "count": 0}

    def worker():
        state["inside"] = True
        call()
        state["inside"] = False
        state["done"] = True

    t = threading.Thread(target=worker)
    t.start()
    while not state["done"]:
        if state["inside"]:
            state["count"] += 1
    t.join()
    return state["count"]


@pytest.mark.parametrize("what", ["matmul", "predict", "fit_epoch"])
def test_long_calls_release_the_gil(what):
    # A call holding the GIL for its whole length lets the other thread run a
    # handful of iterations at most (at its edges); one that releases it lets
    # it run hundreds of thousands (the bound is 2 000).  The margin makes this robust to load.
    rng = np.random.default_rng(9)
    if what == "matmul":
        a = rng.normal(size=(700, 700)).astype(np.float32)
        call = lambda: [bpcore.matmul(a, a) for _ in range(3)]  # noqa: E731
    elif what == "predict":
        net = MLP([512, 512, 512, 10], seed=0)
        x = rng.normal(size=(2000, 512)).astype(np.float32)
        call = lambda: net.predict(x)  # noqa: E731
    else:
        net = MLP([256, 256, 10], seed=0)
        # One epoch = one batch of ~2 GFLOP (tens of ms), no GIL: long enough that
        # the counting thread runs even on a loaded 2-core machine.
        x = rng.normal(size=(15, 256)).astype(np.float32)
        y = rng.normal(size=(15, 10)).astype(np.float32)
        x = np.repeat(x, 400, axis=0)[:6000]
        y = np.repeat(y, 400, axis=0)[:6000]
        call = lambda: net.fit(x, y, epochs=1, batch_size=6000, lr=0.0)  # noqa: E731
    # One GEMM thread, so a core is left for the counting thread even on a busy 2-core box.
    old = bpcore.get_num_threads()
    bpcore.set_num_threads(1)
    try:
        assert _other_thread_progress(call) > 2_000
    finally:
        bpcore.set_num_threads(old)


def test_results_do_not_depend_on_the_gemm_thread_count():
    x, y = _data(n=512, n_in=300, n_out=10, seed=10, labels=True)
    weights = []
    old = bpcore.get_num_threads()
    try:
        for n in (1, 2, 3):
            bpcore.set_num_threads(n)
            net = MLP([300, 400, 10], activation="relu", loss="cross_entropy", seed=11)
            net.fit(x, y, epochs=2, batch_size=256, lr=0.05, seed=0)
            weights.append((net.parameters.copy(), bpcore.matmul(x, net.weights[0])))
    finally:
        bpcore.set_num_threads(old)
    for params, product in weights[1:]:
        np.testing.assert_array_equal(params, weights[0][0])
        np.testing.assert_array_equal(product, weights[0][1])
