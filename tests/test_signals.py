"""Signal handlers during training: what they raise comes out of ``fit`` unchanged.

The compiled epoch polls for signals between batches without holding the GIL
the rest of the time; a handler that raises must give exactly what plain
Python code would: the same exception (``SystemExit(3)`` exits with status 3,
``TimeoutError`` propagates), the parameters of the batches that completed,
and only Python's own Ctrl-C becoming bpcore's documented ``KeyboardInterrupt``.
Each case runs in a fresh interpreter (a handler is process-wide state).
"""
import json
import sys

import pytest

from conftest import run_python

# A fit long enough (about 10^5 batches) that the signal always lands inside it.
FIT = """
import json, os, signal, sys, numpy as np
import bpcore
rng = np.random.default_rng(6)
x = rng.normal(size=(4096, 16)).astype(np.float32)
y = rng.normal(size=(4096, 4)).astype(np.float32)
net = bpcore.MLP([16, 32, 4], seed=0, backend={backend!r}{model_args})
before = net.parameters.copy()

def report():
    print(json.dumps({{"finite": bool(np.isfinite(net.parameters).all()),
                      "moved": bool((net.parameters != before).any())}}), flush=True)

{handler}
signal.setitimer(signal.ITIMER_REAL, 0.3)
try:
    net.fit(x, y, epochs=100000, batch_size=8, **{fit_args})
finally:
    report()
"""

HANDLERS = {
    "system_exit": ("signal.signal(signal.SIGALRM, lambda s, f: sys.exit(3))", 3, ""),
    "timeout": ("def on_alarm(s, f):\n    raise TimeoutError('budget spent')\n"
                "signal.signal(signal.SIGALRM, on_alarm)", 1, "TimeoutError: budget spent"),
    "keyboard_custom": ("def on_alarm(s, f):\n    raise KeyboardInterrupt('mine')\n"
                        "signal.signal(signal.SIGALRM, on_alarm)", -2, "KeyboardInterrupt: mine"),
    # a SIGTERM handler raising SystemExit, the SIGTERM sent by the alarm handler
    "sigterm": ("signal.signal(signal.SIGTERM, lambda s, f: sys.exit(143))\n"
                "signal.signal(signal.SIGALRM, lambda s, f: os.kill(os.getpid(), "
                "signal.SIGTERM))", 143, None),
}

FIT_ARGS = {"plain": {"lr": 1e-4}, "general": {"optimizer": "adam", "lr": 1e-5}}


@pytest.mark.parametrize("fit_args", sorted(FIT_ARGS))
@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("case", sorted(HANDLERS))
def test_handler_exception_propagates_unchanged(case, backend, fit_args):
    handler, code, message = HANDLERS[case]
    res = run_python(FIT.format(backend=backend, handler=handler, model_args="",
                                fit_args=FIT_ARGS[fit_args]), check=False, timeout=120)
    _assert_outcome(res, code, message)


def _assert_outcome(res, code, message):
    assert res.returncode == code, res.stderr[-2000:]
    if message == "":  # SystemExit: Python prints nothing
        assert res.stderr.strip() == "", res.stderr[-2000:]
    elif message is not None:
        assert res.stderr.strip().splitlines()[-1] == message, res.stderr[-2000:]
    assert "interrupted at epoch" not in res.stderr
    state = json.loads(res.stdout.strip().splitlines()[-1])
    assert state == {"finite": True, "moved": True}


@pytest.mark.parametrize("case", ["system_exit", "timeout", "sigterm"])
def test_handler_exception_propagates_from_a_bfloat16_fit(case):
    """compute_dtype="bfloat16" (on an AMX CPU its tiles: the process then holds the
    8 KiB tile state, granted at import, which the kernel saves in every signal frame)
    with faulthandler enabled after that grant (its sigaltstack must still be taken)."""
    handler, code, message = HANDLERS[case]
    handler = ("import faulthandler\nfaulthandler.enable(all_threads=True)\n"
               "assert faulthandler.is_enabled()\n" + handler)
    res = run_python(FIT.format(backend="compiled", handler=handler,
                                model_args=", compute_dtype='bfloat16'",
                                fit_args=FIT_ARGS["plain"]), check=False, timeout=120)
    _assert_outcome(res, code, message)


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_plain_ctrl_c_is_the_documented_keyboard_interrupt(backend):
    code = FIT.format(backend=backend, fit_args=FIT_ARGS["plain"], model_args="",
                      handler="signal.signal(signal.SIGALRM, lambda s, f: os.kill("
                              "os.getpid(), signal.SIGINT))")
    res = run_python(code, check=False, timeout=120)
    assert res.returncode == -2, res.stderr[-2000:]  # Python re-raises SIGINT at exit
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("KeyboardInterrupt: training interrupted at epoch "), last
    assert last.endswith("the weights are kept"), last
    state = json.loads(res.stdout.strip().splitlines()[-1])
    assert state == {"finite": True, "moved": True}


def test_handler_exception_leaves_a_usable_model():
    """The exception is caught by the caller; training on the same model goes on."""
    out = run_python("""
        import signal, numpy as np, bpcore
        rng = np.random.default_rng(1)
        x = rng.normal(size=(2048, 8)).astype(np.float32)
        y = rng.normal(size=(2048, 2)).astype(np.float32)
        net = bpcore.MLP([8, 16, 2], seed=0)
        def on_alarm(s, f):
            raise TimeoutError("stop")
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        try:
            net.fit(x, y, epochs=100000, batch_size=4, lr=1e-4)
        except TimeoutError as exc:
            print("caught", exc)
        loss = net.train_step(x[:4], y[:4], lr=1e-4)
        print("finite", np.isfinite(loss) and np.isfinite(net.parameters).all())
    """)
    assert out.splitlines() == ["caught stop", "finite True"]
