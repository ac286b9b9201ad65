"""Replace scikit-learn's MLP with bpcore's: one changed import, the same model, faster.

Run: ``python examples/sklearn_dropin.py`` (needs ``pip install 'bpcore[sklearn]'``).

Trains scikit-learn's MLPClassifier and bpcore's on the digits data with the
same parameters and random_state, and prints the time per epoch, the test
accuracy and the largest difference between the two models' weights.
"""
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as SklearnMLP

from bpcore.sklearn import MLPClassifier  # the one changed line


def main():
    warnings.simplefilter("ignore", ConvergenceWarning)  # 30 epochs on purpose
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, random_state=0)
    params = dict(hidden_layer_sizes=(64,), solver="sgd", batch_size=32, max_iter=30,
                  n_iter_no_change=31, random_state=0)
    models = {}
    for name, cls in (("scikit-learn", SklearnMLP), ("bpcore", MLPClassifier)):
        model = cls(**params)
        start = time.perf_counter()
        model.fit(X_train, y_train)
        per_epoch = (time.perf_counter() - start) / model.n_iter_
        models[name] = model
        print(f"{name:13} {per_epoch * 1e3:7.2f} ms/epoch   test accuracy "
              f"{model.score(X_test, y_test):.4f}")
    a, b = models["scikit-learn"], models["bpcore"]
    diff = max(float(np.max(np.abs(p - q)) / np.max(np.abs(p)))
               for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_))
    print(f"largest relative difference between the two models' weights: {diff:.1e}")


if __name__ == "__main__":
    main()
