"""python -m bpcore bench: the quick tables, peers that are missing, the way to the full harness."""
import ast
import os
import re
import subprocess
import sys

import pytest
from conftest import import_oracle, run_python

import bpcore
from bpcore import _quickbench, cli

# Builds, subprocesses or other tools: in CI (CI=true) and with --runslow; not in a
# plain local `pytest`, nor in the sanitizer rerun (.ci/sanitize).
pytestmark = pytest.mark.slow

NUMBER = r"[0-9]+\.[0-9]+"


def _section(out, title):
    """The lines of the table whose caption starts with ``title``, up to a blank line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start + 1:end]


def test_smoke_prints_the_headline_tables_beside_every_peer(capsys):
    for name in ("torch", "sklearn", "threadpoolctl", "mpi4py"):
        import_oracle(name)
    assert cli.main(["bench", "--smoke"]) == 0
    out = capsys.readouterr().out
    assert "1 thread(s) for bpcore, NumPy's BLAS and torch" in out.splitlines()[0]
    assert "peer missing" not in out
    gemm = _section(out, "GEMM, square, 1 thread(s)")
    assert [row.split()[0] for row in gemm[1:]] == ["float32", "float64"]
    assert all(len(re.findall(NUMBER, row)) == 5 for row in gemm[1:])
    training = _section(out, "Training step")
    assert "torch" in training[0] and "% peak" in training[0]
    # bpcore, numpy, ratio, torch, ratio (positive), GFLOP/s, % peak (0.0 after rounding
    # for the tiny network)
    for row in training[1:]:
        values = [float(v) for v in re.findall(NUMBER, row)]
        assert len(values) == 7 and min(values[:5]) > 0 and min(values) >= 0, row
    assert len(training) == 3
    options = _section(out, "Step options")
    assert [row[:26].strip() for row in options] == [
        label for label, _, _ in _quickbench.STEP_OPTIONS]
    for row in options:
        assert len(re.findall(NUMBER, row[26:])) == 2, row
    digits = next(line for line in out.splitlines() if line.startswith("Digits 64-64-10"))
    assert re.search(rf"epoch bpcore {NUMBER} ms, scikit-learn {NUMBER} ms", digits)
    assert re.search(rf"after 1 epochs bpcore {NUMBER}, scikit-learn {NUMBER}$", digits)


BLOCKED = ("torch", "sklearn", "threadpoolctl", "mpi4py")


def test_missing_peers_are_named_not_a_crash():
    # A fresh interpreter where importing any peer fails, as when it is not installed.
    res = run_python(f"""
        import sys

        class Absent:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ImportError(f"No module named {{name!r}} (blocked by the test)")

        sys.meta_path.insert(0, Absent())
        from bpcore import cli
        sys.exit(cli.main(["bench", "--smoke", "--threads", "2"]))
        """, check=False)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    out = res.stdout
    assert "2 thread(s)" in out.splitlines()[0]
    for name in ("torch", "scikit-learn", "threadpoolctl", "mpi4py"):
        assert re.search(rf"^peer missing: {name} \(", out, re.M), name
    assert "NumPy's BLAS threads are not limited" in out
    training = _section(out, "Training step")
    assert "torch" not in training[0] and len(training) == 3
    assert "(digits table skipped: needs scikit-learn)" in out


def test_the_harness_is_found_only_beside_the_package(tmp_path):
    (tmp_path / "bpcore").mkdir()
    assert _quickbench.harness_script(str(tmp_path / "bpcore")) is None
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "run.py").write_text("")
    assert _quickbench.harness_script(str(tmp_path / "bpcore")) == str(tmp_path / "bench" /
                                                                       "run.py")


@pytest.mark.parametrize("argv,forwarded", [
    (["--full"], ["--full"]),
    (["--full", "--threads", "2"], ["--full", "--threads", "2"]),
    (["--distributed"], ["--only", "distributed"]),
])
def test_full_runs_the_harness_with_this_bpcore(tmp_path, monkeypatch, capfd, argv, forwarded):
    script = tmp_path / "run.py"
    script.write_text("import sys, bpcore; print(bpcore.__file__); print(sys.argv[1:])\n")
    monkeypatch.setattr(_quickbench, "harness_script", lambda: str(script))
    monkeypatch.chdir(tmp_path)  # the child must find this bpcore from anywhere
    assert cli.main(["bench", *argv]) == 0
    printed_file, printed_argv = capfd.readouterr().out.splitlines()
    assert os.path.samefile(printed_file, bpcore.__file__)
    assert printed_argv == str(forwarded)


def test_full_outside_a_checkout_says_where_to_run_it(monkeypatch, capsys):
    monkeypatch.setattr(_quickbench, "harness_script", lambda: None)
    assert cli.main(["bench", "--full"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "python bench/run.py --full" in lines[0]


def test_threads_below_one_are_refused_by_name():
    with pytest.raises(SystemExit, match="`--threads` must be >= 1; got 0"):
        cli.main(["bench", "--threads", "0"])


# The timing harness (bench/) and the old in-package harness modules.
HARNESS = {"bench", "harness", "peer_tables", "gemm_table", "worker", "run",
           "bpcore.benchmarks", "bpcore._gemm_table"}


def _imports(path):
    text = open(path).read()
    if path.endswith(".py"):
        names = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = (".".join(filter(None, ["bpcore", node.module])) if node.level
                        else node.module)
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
        return names
    return set(re.findall(r"^\s*(?:from|c?import)\s+([\w.]+)", text, re.M))


def test_no_module_of_the_package_imports_the_harness():
    package = os.path.dirname(os.path.abspath(bpcore.__file__))
    files = [os.path.join(package, f) for f in os.listdir(package)
             if f.endswith((".py", ".pyx", ".pxd"))]
    assert os.path.join(package, "cli.py") in files
    for path in files:
        names = _imports(path)
        bad = {n for n in names if n in HARNESS or n.split(".")[0] in HARNESS}
        assert not bad, f"{path} imports {bad}"
    assert not any(os.path.exists(os.path.join(package, f))
                   for f in ("benchmarks.py", "_gemm_table.py"))


def test_time_calls_settles_before_each_contenders_round_untimed(monkeypatch):
    """settle: one untimed sleep before each contender's timed round (and none without)."""
    slept = []
    monkeypatch.setattr(_quickbench.time, "sleep", slept.append)
    calls = {"a": 0, "b": 0}

    def bump(name):
        calls[name] += 1
    times = _quickbench.time_calls({"a": lambda: bump("a"), "b": lambda: bump("b")},
                                   min_time=1e-4, rounds=3, settle=0.25)
    assert slept == [0.25] * 6 and set(times) == {"a", "b"}
    slept.clear()
    _quickbench.time_calls({"a": lambda: bump("a")}, min_time=1e-4, rounds=3)
    assert slept == []


def test_block_sweep_runs_each_candidate_and_restores_the_table():
    """bench/blocks.py (the in-process cache-block sweep, ``_gemm._set_blocks``)."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "bench", "blocks.py")
    out = subprocess.run([sys.executable, script, "--smoke", "--rounds", "1",
                          "--kc", "16,64"], capture_output=True, text=True, timeout=300,
                         check=True).stdout.splitlines()
    assert out[0].startswith("kernel ") and "table blocks" in out[0]
    rows = [line.split() for line in out[2:]]
    assert [r[0] for r in rows][:2] == ["16", "64"]
    table_row = [r for r in rows if all(abs(float(v) - 1) < 1e-12 for v in r[3:])]
    assert len(table_row) == 1 and len(table_row[0]) == 3 + 6
