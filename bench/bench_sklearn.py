"""pytest-benchmark: bpcore.sklearn.MLPClassifier vs scikit-learn's, one fit each.

Run: ``OMP_NUM_THREADS=1 pytest bench/bench_sklearn.py --benchmark-group-by=param:case``
(each group compares the two on one case; a fit is ``epochs`` epochs, both
with the same parameters and random_state).  The same fits as one ratio table
with test scores and peak RSS: ``python bench/run.py --only sklearn``.
"""
import warnings

import pytest

import peer_tables
from harness import limit_threads

pytest.importorskip("sklearn")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("who", ["sklearn", "bpcore"])
@pytest.mark.parametrize("case", list(peer_tables.SKLEARN_CASES))
def test_fit(benchmark, case, who, threads):
    spec = peer_tables.SKLEARN_CASES[case]
    X, _, y, _ = peer_tables._sklearn_data(spec["data"])
    benchmark.group = f"{case} {threads} thread(s)"
    with limit_threads(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        benchmark.pedantic(lambda: peer_tables._sklearn_estimator(who, spec, threads).fit(X, y),
                           rounds=1 if spec["data"] != "digits" else 3, iterations=1)
