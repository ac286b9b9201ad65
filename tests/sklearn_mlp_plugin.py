"""pytest plugin: run scikit-learn's own MLP tests against ``bpcore.sklearn``'s estimators.

Loaded by ``tests/test_sklearn_suite.py`` in a child pytest (``-p sklearn_mlp_plugin``)
that runs the installed ``sklearn/neural_network/tests/test_mlp.py``.  At import --
before that test module is collected, so before its ``from sklearn.neural_network
import MLPClassifier, MLPRegressor`` runs -- the plugin puts bpcore's classes in
scikit-learn's namespace.

NOTE: a substitution that silently did not happen would make the suite test
scikit-learn against itself and pass.  So the plugin (1) fails the collection if
the collected module's names are not bpcore's classes, and (2) counts the
estimators constructed and the fits that reached bpcore's compiled code, and
writes the counts to the JSON file named by ``BPCORE_SKLEARN_COUNTS``; the
outer test asserts both are positive.
"""
import functools
import json
import os

import sklearn.neural_network

import bpcore.sklearn as bp

COUNTS = {"constructed": 0, "compiled": 0}


def _counting(cls):
    """Count ``cls``'s constructions and its uses of the compiled Trainer (in place)."""
    init, trainer = cls.__init__, cls._bp_trainer

    # functools.wraps keeps ``__wrapped__``, so inspect.signature -- which
    # scikit-learn's get_params reads -- still sees the real parameters.
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if type(self) is cls:
            COUNTS["constructed"] += 1
        init(self, *args, **kwargs)

    @functools.wraps(trainer)
    def _bp_trainer(self, *args, **kwargs):
        COUNTS["compiled"] += 1
        return trainer(self, *args, **kwargs)

    cls.__init__ = __init__
    cls._bp_trainer = _bp_trainer
    return cls


# The two bpcore classes only serve this child process, so patching them in
# place costs nothing outside it.
sklearn.neural_network.MLPClassifier = _counting(bp.MLPClassifier)
sklearn.neural_network.MLPRegressor = _counting(bp.MLPRegressor)


def pytest_collection_modifyitems(session, config, items):
    modules = {item.module for item in items if getattr(item, "module", None) is not None}
    for module in modules:
        for name, cls in (("MLPClassifier", bp.MLPClassifier),
                          ("MLPRegressor", bp.MLPRegressor)):
            if getattr(module, name, cls) is not cls:
                raise RuntimeError(f"{module.__name__}.{name} is not bpcore's class: the "
                                   "plugin was loaded after the test module was imported")


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("BPCORE_SKLEARN_COUNTS")
    if path:
        with open(path, "w") as f:
            json.dump(COUNTS, f)
