"""The files boundary as a class: coverage-guided fuzzing of every reader of user files.

``tests/fuzz_files_harness.py`` runs libFuzzer (atheris) over ``MLP.load``
and over the CLI's CSV, ``.npy`` and ``.npz`` readers (with ``train``'s
preprocessing), each in a child process started from seeds generated here
(valid model and data files).  An input passes if it reads or raises a
``ValueError`` naming the file; memory is bounded by an address-space limit
in the child (libFuzzer's RSS limit under ASan, which ``.ci/sanitize`` runs
this under too) and by libFuzzer's time-out per input.  A finding fails the
test with the input saved and printed in base64.

``BPCORE_FUZZ_SECONDS`` (default 10; 6 under ASan) is the time of each
target; the four run side by side.  NOTE: under ``.ci/sanitize`` the
preloaded libasan takes over the coverage callbacks, so there libFuzzer
mutates without coverage feedback: the run still checks every input and
runs bpcore's ASan build, but finds less; the guided search is the normal run's.
"""
import base64
import io
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import import_oracle

import bpcore
from bpcore import MLP, cli

import_oracle("atheris")  # required in CI (the test extra), skipped elsewhere without it

ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
SECONDS = int(os.environ.get("BPCORE_FUZZ_SECONDS", "6" if ASAN else "10"))
HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_files_harness.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(bpcore.__file__)))
MAX_LEN = {"model": 8192, "csv": 2048, "npy": 2048, "npz": 4096, "selftest": 256}


def _model_seeds(directory):
    MLP([2, 3, 2], loss="cross_entropy", seed=0).save(directory / "classifier.npz")
    MLP([3, 1], dtype="float64", seed=1).save(directory / "regressor.npz")
    net = MLP([2, 2, 3], activation="tanh", loss="cross_entropy", seed=2)
    cli.save_model(directory / "cli.npz", net, {
        "task": np.array("classification"), "classes": np.array(["a", "b", "c"]),
        "mean": np.zeros(2), "std": np.ones(2), "feature_names": np.array(["u", "v"]),
        "target_name": np.array("label"), "target_index": np.int64(2)})
    with np.load(directory / "classifier.npz") as archive:  # the same, deflated
        np.savez_compressed(directory / "deflated.npz", **dict(archive))


def _csv_seeds(directory):
    (directory / "labels.csv").write_text("a,b,label\n1.5,2,x\n-3,4e1,y\n0,0,x\n")
    (directory / "bom.csv").write_bytes("\ufeffa,b\n1,2\n3,4\n".encode())
    (directory / "plain.csv").write_text("1,2,3\n4,5,6\n7,8,9.5\n")
    (directory / "missing.csv").write_text(",1,2\n3,,4\n5,6,nan\n")
    (directory / "quoted.csv").write_text('"a","b ,c"\n"1","2"\n')


def _npy_seeds(directory):
    np.save(directory / "float.npy", np.arange(12.0).reshape(4, 3))
    np.save(directory / "int.npy", np.arange(6, dtype=np.int32).reshape(3, 2))
    np.save(directory / "fortran.npy", np.asfortranarray(np.ones((2, 3), np.float32)))


def _npz_seeds(directory):
    np.savez(directory / "ints.npz", x=np.ones((3, 2)), y=np.array([0, 1, 0]))
    np.savez(directory / "floats.npz", x=np.ones((2, 2), np.float32), y=np.ones((2, 2)))
    np.savez_compressed(directory / "strings.npz", x=np.zeros((2, 1)), y=np.array(["p", "q"]))


def _selftest_seeds(directory):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.npy", b"")
    (directory / "zip.npz").write_bytes(buf.getvalue())


SEEDS = {"model": _model_seeds, "csv": _csv_seeds, "npy": _npy_seeds, "npz": _npz_seeds,
         "selftest": _selftest_seeds}


def _start(target, tmp_path, seconds):
    corpus, artifacts = tmp_path / f"{target}-corpus", tmp_path / f"{target}-findings"
    corpus.mkdir()
    artifacts.mkdir()
    SEEDS[target](corpus)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    # Under ASan the address-space limit is off (its shadow needs the space);
    # libFuzzer's RSS limit bounds memory there.
    rss = 3072 if ASAN else 2048
    # NOTE: a fixed seed: the same mutations in the same order on every run, so a
    # slower machine explores a prefix of what a faster one does (CI repeats what
    # the developers ran, rather than drawing new inputs each time).
    command = [sys.executable, HARNESS, target, str(corpus), f"-max_total_time={seconds}",
               "-seed=1",
               f"-artifact_prefix={artifacts}{os.sep}", f"-max_len={MAX_LEN[target]}",
               "-timeout=20", f"-rss_limit_mb={rss}", "-print_final_stats=1"]
    log = open(tmp_path / f"{target}.log", "w+")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=tmp_path), log, artifacts


def _findings(target, proc, log, artifacts):
    """'' when the run was clean, else a report with each finding in base64."""
    log.seek(0)
    lines = [line for line in log.read().splitlines() if not line.startswith(("#", "INFO:"))]
    saved = sorted(p for p in artifacts.iterdir())
    if proc.returncode == 0 and not saved:
        return ""
    # The Python traceback first (under ASan a native stack trace follows it), then the end.
    start = next((i for i, line in enumerate(lines) if "Uncaught Python exception" in line),
                 max(len(lines) - 40, 0))
    shown = lines[start:start + 40]
    if start + 40 < len(lines):
        shown += ["...", *lines[max(start + 40, len(lines) - 10):]]
    report = [f"{target}: libFuzzer exited {proc.returncode}; its log:", *shown]
    for path in saved:
        data = path.read_bytes()
        report += [f"finding {path} ({len(data)} bytes; replay: PYTHONPATH={ROOT} python "
                   f"{HARNESS} {target} {path}), base64:",
                   base64.b64encode(data).decode()]
    return "\n".join(report)


def _run(targets, tmp_path, seconds):
    runs = {t: _start(t, tmp_path, seconds) for t in targets}
    reports = []
    for target, (proc, log, artifacts) in runs.items():
        try:
            proc.wait(timeout=seconds + 180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reports.append(_findings(target, proc, log, artifacts))
        log.close()
    return [r for r in reports if r]


def test_every_file_reader_survives_fuzzing(tmp_path):
    reports = _run(["model", "csv", "npy", "npz"], tmp_path, SECONDS)
    assert not reports, "\n\n".join(reports)


def test_a_finding_fails_with_the_input_in_base64(tmp_path):
    # The planted bug (a KeyError on any zip) is hit by the first seed.
    reports = _run(["selftest"], tmp_path, 20)
    assert len(reports) == 1 and "planted bug" in reports[0], reports
    encoded = reports[0].split("base64:\n")[1].split("\n")[0]
    assert base64.b64decode(encoded).startswith(b"PK\x03\x04")


# The header of an .npy entry with an unbalanced quote: numpy's parser raised
# tokenize.TokenError (found by the npy target).
BAD_HEADER = base64.b64decode(
    "k05VTVBZAQB2AHsnZGVzY3InOiAnPGk0JywgJ2ZtcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDMsIDEp"
    "LCB9ICAgICAiICAgICAgICAgICAgICAgICAgICAgIJNOVU1QWQEAdgB7J2QgICAgICAgICAgICAgICAgICBlc2Ny"
    "JzogJzw=")


@pytest.mark.parametrize("where", ["npy", "npz", "model"])
def test_fuzzer_finding_unparsable_header_is_a_value_error(tmp_path, where):
    path = tmp_path / f"bad.{'npy' if where == 'npy' else 'npz'}"
    if where == "npy":
        path.write_bytes(BAD_HEADER)
    else:
        with zipfile.ZipFile(path, "w") as z:
            for name in ("x", "y") if where == "npz" else (
                    "format", "version", "layer_sizes", "activations", "loss", "reduction",
                    "dtype", "params"):
                z.writestr(f"{name}.npy", BAD_HEADER)
    with pytest.raises(ValueError, match="unreadable .npy header") as info:
        MLP.load(path) if where == "model" else cli.read_table(path)
    assert str(path) in str(info.value)


def test_an_empty_table_declaring_many_columns_is_refused_at_once(tmp_path):
    # Zero rows of 10**9 columns hold no bytes; the column count must not drive any work.
    np.save(tmp_path / "wide.npy", np.empty((0, 10**9), np.float32))
    np.savez(tmp_path / "wide.npz", x=np.empty((0, 10**9)), y=np.empty(0))
    for name in ("wide.npy", "wide.npz"):
        with pytest.raises(ValueError, match="no rows") as info:
            cli.read_table(str(tmp_path / name))
        assert name in str(info.value)
