"""scikit-learn's own MLP tests, run against bpcore.sklearn's estimators.

The installed ``sklearn/neural_network/tests/test_mlp.py`` runs in a child
pytest with ``tests/sklearn_mlp_plugin.py``, which puts bpcore's
``MLPClassifier``/``MLPRegressor`` in scikit-learn's namespace before the file
is collected (the file is not copied here).  scikit-learn's conftest (its
``global_random_seed`` fixture) is loaded as in scikit-learn's own CI.
"""
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import import_oracle

sklearn = import_oracle("sklearn")

import bpcore  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow  # a child pytest: in CI and with --runslow, not in the sanitizer rerun
def test_scikit_learns_mlp_tests_pass_with_bpcore(tmp_path):
    package = os.path.dirname(os.path.abspath(sklearn.__file__))
    target = os.path.join(package, "neural_network", "tests", "test_mlp.py")
    counts = tmp_path / "counts.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(bpcore.__file__)))
    env = dict(os.environ, BPCORE_SKLEARN_COUNTS=str(counts),
               PYTHONPATH=os.pathsep.join(p for p in (root, TESTS, os.environ.get("PYTHONPATH"))
                                          if p),
               # One thread each: the suite's small fits spend more in thread
               # hand-offs than in arithmetic on a loaded 2-core machine.
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
         "sklearn_mlp_plugin", f"--rootdir={package}", "-rs", target],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    summary = res.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    # 59 tests in scikit-learn 1.9.1 (pandas, in the test extra, is needed by 2):
    # every one runs and passes, none skipped.
    assert passed >= 59 and "failed" not in summary and "error" not in summary, summary
    assert "skipped" not in summary, summary
    # The substitution took effect: bpcore's classes were built and trained.
    used = json.loads(counts.read_text())
    assert used["constructed"] > 50 and used["compiled"] > 500, used
