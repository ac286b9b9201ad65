"""python -m bpcore: demo, train and bench, run as a user would."""
import numpy as np
import pytest
from conftest import run_python

import bpcore
from bpcore import cli


def test_demo_prints_the_loss_table_and_both_timings(capsys):
    assert cli.main(["demo", "--steps", "60"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [0, 50, 59]
    losses = [float(r[1]) for r in rows]
    assert losses[-1] < losses[0] / 100  # seed 000's run converges
    assert [float(r[2]) for r in rows] == pytest.approx(losses, rel=1e-9)  # reference twin
    assert "time per step: bpcore" in out and "NumPy reference" in out


def test_demo_runs_as_a_module():
    out = run_python("import runpy, sys; sys.argv = ['bpcore', 'demo', '--steps', '10'];"
                     "runpy.run_module('bpcore', run_name='__main__')")
    assert "time per step" in out


def test_train_classification_from_npz_saves_a_loadable_model(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + 3  # labels need not start at 0
    np.savez(tmp_path / "data.npz", x=x, y=y)
    model = tmp_path / "model.npz"
    assert cli.main(["train", str(tmp_path / "data.npz"), "--task", "classification",
                     "--epochs", "20", "--lr", "0.1", "--hidden", "8", "--quiet",
                     "--out", str(model)]) == 0
    out = capsys.readouterr().out
    assert "epoch   20" in out
    accuracy = float(out.split("training accuracy")[1].split()[0])
    assert accuracy > 0.9
    net = bpcore.MLP.load(model)
    assert net.layer_sizes == [4, 8, 2] and net.loss == "cross_entropy"


def test_train_regression_from_csv_with_header(tmp_path, capsys):
    rng = np.random.default_rng(1)
    table = np.c_[rng.normal(size=(50, 2)), rng.normal(size=50)]
    path = tmp_path / "data.csv"
    np.savetxt(path, table, delimiter=",", header="a,b,target", comments="")
    assert cli.main(["train", str(path), "--epochs", "3", "--quiet"]) == 0
    assert "epoch    3" in capsys.readouterr().out


def test_unknown_subcommand_exits_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["fly"])
