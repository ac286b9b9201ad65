"""The libFuzzer (atheris) harness of tests/test_files.py: one file reader per run.

Usage: python tests/fuzz_files_harness.py TARGET [libFuzzer arguments: corpus dirs,
-max_total_time=S, -artifact_prefix=DIR/, ... or one input file to replay it]

TARGET is "model" (bpcore.MLP.load), "csv", "npy" or "npz" (the CLI's readers
and the preprocessing of ``train``), or "selftest" (a reader with a planted
bug, to show that a finding fails the test).  Each input is written to a file
of the target's suffix and read; an input passes if it reads, or raises a
``ValueError`` whose message names the file.  Anything else -- another
exception, a message without the file, a MemoryError under the address-space
limit, a libFuzzer RSS or time-out -- is a finding: libFuzzer saves the input
(``crash-*``, ``oom-*``, ``timeout-*`` under -artifact_prefix) and exits
non-zero.
"""
import os
import resource
import sys
import tempfile

import atheris

# Without ASan (whose shadow memory needs terabytes of address space), a hard
# limit on the address space makes any large allocation a MemoryError: bounded
# memory is then checked exactly, not only by libFuzzer's RSS poll.
if "libasan" not in os.environ.get("LD_PRELOAD", ""):
    _LIMIT = int(os.environ.get("BPCORE_FUZZ_AS_MB", "3072")) << 20
    resource.setrlimit(resource.RLIMIT_AS, (_LIMIT, _LIMIT))

with atheris.instrument_imports(include=["bpcore", "zipfile", "csv"]):
    import zipfile  # noqa: F401  (instrumented for coverage)

    import numpy as np

    from bpcore import MLP, _modelfile, cli

TARGET = sys.argv.pop(1)
SUFFIX = {"model": ".npz", "csv": ".csv", "npy": ".npy", "npz": ".npz", "selftest": ".npz"}
PATH = os.path.join(tempfile.mkdtemp(prefix="bpcore-fuzz-"), "input" + SUFFIX[TARGET])


def _prepare(table):
    """What ``train`` does with a table before it builds the model."""
    target = "-1"
    x, y, names, target_name = cli.features_and_target(table, target)
    try:
        task, _ = cli.infer_task(y, None, target_name)
        cli.encode_target(y, task, target_name)
    except cli.UserError:
        pass  # a well-read table whose target does not suit training: a user error
    cli.standardization(x)


def _read(path):
    if TARGET == "model":
        MLP.load(path)
    elif TARGET == "selftest":
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                raise KeyError("planted bug")
    else:
        _prepare(cli.read_table(path))


def _check(data):
    with open(PATH, "wb") as f:
        f.write(data)
    try:
        _read(PATH)
    except ValueError as exc:
        if PATH not in str(exc):
            raise AssertionError(f"the message does not name the file: {exc}") from exc


def test_one_input(data):
    try:
        _check(data)
    except BaseException:
        # NOTE: under a preloaded libasan the process dies on a signal before
        # atheris's own report reaches the log: print and flush it first.
        import traceback

        print("=== Uncaught Python exception in the reader: ===", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        raise


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
