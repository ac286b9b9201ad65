"""python -m bpcore: demo, train, predict and evaluate, run as a user would.

Most runs are in-process ``cli.main([...])`` calls (fast); a few subprocesses
check exit statuses and ``--debug``.
"""
import os
import re
import sys

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


# ---------------------------------------------------------------------------
# train -> predict / evaluate: the model carries its preprocessing
# ---------------------------------------------------------------------------

def _labelled_csv(path, n=150, seed=0, labels=("cat", "dog"), bom=False):
    """Three features on very different scales; the label depends on all of them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * [1.0, 100.0, 0.01] + [0.0, 500.0, -3.0]
    z = x[:, 0] + (x[:, 1] - 500) / 100 - (x[:, 2] + 3) / 0.01
    y = np.where(z > 0, labels[1], labels[0])
    text = "width,height,depth,animal\n" + "".join(
        f"{a:.17g},{b:.17g},{c:.17g},{label}\n" for (a, b, c), label in zip(x, y))
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return x, y


def _train(tmp_path, data, *extra, capsys=None):
    model = tmp_path / "model.npz"
    rc = cli.main(["train", str(data), "--hidden", "8", "--epochs", "30", "--lr", "0.1",
                   "--quiet", "--out", str(model), *extra])
    assert rc == 0
    return model


def test_round_trip_on_raw_csv_with_string_labels_and_standardize(tmp_path, capsys):
    data = tmp_path / "animals.csv"
    _, labels = _labelled_csv(data)
    model = _train(tmp_path, data, "--standardize")
    captured = capsys.readouterr()
    assert "task: classification (inferred from the string values of target 'animal'" in \
        captured.err
    trained = captured.out.split("training accuracy")[1].split()[0]
    assert float(trained) > 0.9
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", str(model), str(data), "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "animal" and set(rows[1:]) <= {"cat", "dog"}
    assert f"{(np.array(rows[1:]) == labels).mean():.4f}" == trained
    capsys.readouterr()
    assert cli.main(["evaluate", str(model), str(data)]) == 0
    report = capsys.readouterr().out
    assert f"accuracy {trained}" in report and "loss" in report
    counts = {line.split()[0]: line.split()[1:] for line in report.splitlines()
              if line.split()[:1] in (["cat"], ["dog"])}
    assert int(counts["cat"][0]) == (labels == "cat").sum()
    assert int(counts["dog"][0]) == (labels == "dog").sum()


def test_standardize_is_applied_at_predict_time(tmp_path, capsys):
    # The reported defect: a model trained with --standardize scored on raw inputs.
    data = tmp_path / "animals.csv"
    _labelled_csv(data)
    model = _train(tmp_path, data, "--standardize")
    net, prep = cli.load_model(model)
    x = np.loadtxt(data, delimiter=",", skiprows=1, usecols=(0, 1, 2), encoding="utf-8-sig")
    np.testing.assert_allclose(prep["mean"], x.mean(axis=0))
    np.testing.assert_allclose(prep["std"], x.std(axis=0))
    assert prep["feature_names"] == ["width", "height", "depth"]
    assert prep["classes"].tolist() == ["cat", "dog"] and prep["task"] == "classification"


def test_numeric_labels_come_back_as_given_and_proba(tmp_path, capsys):
    data = tmp_path / "fives.csv"
    _labelled_csv(data, labels=("5", "6"))
    model = _train(tmp_path, data, "--standardize")
    capsys.readouterr()
    assert cli.main(["predict", str(model), str(data)]) == 0
    out = capsys.readouterr().out.split()
    assert out[0] == "animal" and set(out[1:]) == {"5", "6"}
    assert cli.main(["predict", str(model), str(data), "--proba"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "5,6"
    probs = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)


def test_predict_without_the_target_column_and_by_header_order(tmp_path, capsys):
    data = tmp_path / "animals.csv"
    x, labels = _labelled_csv(data)
    model = _train(tmp_path, data, "--standardize")
    capsys.readouterr()
    assert cli.main(["predict", str(model), str(data)]) == 0
    expected = capsys.readouterr().out
    # Columns reordered, target dropped: the model picks its features by name.
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("depth,width,height\n" + "".join(
        f"{c:.17g},{a:.17g},{b:.17g}\n" for a, b, c in x))
    assert cli.main(["predict", str(model), str(shuffled)]) == 0
    assert capsys.readouterr().out == expected


def test_regression_task_is_inferred_and_evaluated_with_r2(tmp_path, capsys):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 2))
    table = np.c_[x, x @ [1.5, -2.0] + 0.25]
    data = tmp_path / "reg.csv"
    np.savetxt(data, table, delimiter=",")  # no header
    model = _train(tmp_path, data, "--standardize", "--epochs", "60")
    captured = capsys.readouterr()
    assert "task: regression (inferred from the float values" in captured.err
    assert cli.main(["evaluate", str(model), str(data)]) == 0
    out = capsys.readouterr().out
    assert float(out.split("R²")[1].split()[0]) > 0.9


def test_target_by_name_and_negative_index(tmp_path, capsys):
    data = tmp_path / "animals.csv"
    _labelled_csv(data)
    for target in ("animal", "-1", "3"):
        model = _train(tmp_path, data, "--target", target)
        assert cli.load_model(model)[1]["target_name"] == "animal"
    capsys.readouterr()


def test_integral_float_target_with_task_classification(tmp_path, capsys):
    data = tmp_path / "d.csv"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    np.savetxt(data, np.c_[x, (x[:, 0] > 0) * 2.0 + 1], delimiter=",")
    model = _train(tmp_path, data, "--task", "classification")
    assert cli.load_model(model)[1]["classes"].tolist() == [1, 3]
    capsys.readouterr()


def test_bom_and_empty_first_cell_keep_the_first_data_row(tmp_path, capsys):
    data = tmp_path / "bom.csv"
    _labelled_csv(data, n=40, bom=True)
    table = cli.read_table(str(data))
    assert table.names == ["width", "height", "depth", "animal"]
    assert len(table.columns[0]) == 40
    plain = tmp_path / "plain.csv"
    plain.write_bytes("\ufeff1,2,0\n3,4,1\n5,6,0\n".encode())
    assert cli.read_table(str(plain)).names is None
    assert len(cli.read_table(str(plain)).columns[0]) == 3
    empty_first = tmp_path / "empty.csv"
    empty_first.write_text(",2,0\n3,4,1\n5,6,0\n7,8,1\n")
    table = cli.read_table(str(empty_first))
    assert table.names is None and len(table.columns[0]) == 4
    assert cli.main(["train", str(empty_first), "--drop-missing", "--quiet", "--epochs", "1"]) \
        == 0
    assert "on 3 samples" in capsys.readouterr().err
    labels_first = tmp_path / "labels.csv"  # a string label in the first row is data
    labels_first.write_text("1,2,cat\n3,4,dog\n")
    assert cli.read_table(str(labels_first)).names is None


def test_old_model_files_work_and_new_ones_load_in_old_readers(tmp_path, capsys):
    net = bpcore.MLP([3, 4, 2], loss="cross_entropy", seed=0)
    old = tmp_path / "old.npz"
    # Exactly what the old MLP.save wrote: the required entries, nothing else.
    np.savez(old, format=np.array("bpcore-mlp"), version=np.array(1, np.int64),
             layer_sizes=np.array(net.layer_sizes, np.int64),
             activations=np.array(net.activations), loss=np.array(net.loss),
             reduction=np.array(net.reduction), dtype=np.array(net.dtype.name),
             params=net.parameters)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 3))
    data = tmp_path / "x.csv"
    np.savetxt(data, np.c_[x, rng.integers(0, 2, 20)], delimiter=",", fmt="%.17g")
    assert cli.main(["predict", str(old), str(data), "--target", "-1"]) == 0
    out = capsys.readouterr().out.split()
    expected = net.predict(x.astype(np.float32)).argmax(axis=1)
    assert out[1:] == [str(v) for v in expected]
    assert cli.main(["evaluate", str(old), str(data), "--target", "-1"]) == 0
    assert "accuracy" in capsys.readouterr().out
    # A new file holds plain arrays only: np.load without pickle (the old reader) reads all.
    animals = tmp_path / "animals.csv"
    _labelled_csv(animals)
    model = _train(tmp_path, animals, "--standardize")
    with np.load(model, allow_pickle=False) as archive:
        entries = {name: archive[name] for name in archive.files}
    assert entries["extra/cli_classes"].tolist() == ["cat", "dog"]
    np.testing.assert_array_equal(bpcore.MLP.load(model).parameters,
                                  entries["params"])
    capsys.readouterr()


# ---------------------------------------------------------------------------
# user errors: one line on stderr naming the argument or file, exit status 2
# ---------------------------------------------------------------------------

def _fails(capsys, argv, *words):
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "error:" in last, err
    for word in words:
        assert word in last, (word, last)
    return err


def test_user_errors_are_one_line_with_status_2(tmp_path, capsys):
    data = tmp_path / "animals.csv"
    _labelled_csv(data, n=40)
    five = tmp_path / "five.csv"
    rng = np.random.default_rng(0)
    np.savetxt(five, rng.normal(size=(40, 5)), delimiter=",")
    cases = [
        (["train", str(tmp_path / "nope.csv")], ["nope.csv", "No such file"]),
        (["train", str(data), "--hidden", "64,abc"], ["--hidden", "'abc'"]),
        (["train", str(five), "--target", "9"], ["`--target` 9", "5 columns"]),
        (["train", str(five), "--target", "-6"], ["`--target` -6"]),
        (["train", str(data), "--target", "colour"], ["`--target` 'colour'", "animal"]),
        (["train", str(five), "--target", "0", "--task", "classification"],
         ["non-integral", "--task classification"]),
        (["train", str(data), "--task", "regression"], ["--task regression", "string"]),
        (["train", str(data), "--lr", "-1", "--quiet"], ["`lr`"]),  # bpcore's own message
        (["predict", str(tmp_path / "none.npz"), str(data)], ["none.npz"]),
        (["predict", str(data), str(data)], ["animals.csv", "not a readable"]),
        (["demo", "--steps", "0"], ["`--steps`"]),
    ]
    for argv, words in cases:
        err = _fails(capsys, argv, *words)
        if argv[0] != "train" or "--lr" not in argv:
            assert len(err.strip().splitlines()) in (1, 2), err  # (+ the task line)


def test_bad_cells_are_named_by_row_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,y\n1,2,0\n3,oops,1\n5,6,0\n")
    _fails(capsys, ["train", str(bad)], "bad.csv", "row 3", "column 2 'b'", "'oops'")
    missing = tmp_path / "missing.csv"
    missing.write_text("a,b,y\n1,2,0\n3,,1\n5,6,0\n")
    _fails(capsys, ["train", str(missing)], "row 3", "column 2 'b'", "missing", "--drop-missing")
    nan_label = tmp_path / "nan.csv"
    nan_label.write_text("a,b,y\n1,2,0\n3,4,nan\n5,6,1\n")
    _fails(capsys, ["train", str(nan_label)], "row 3", "column 3 'y'", "missing")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("1,2,0\n3,4\n")
    _fails(capsys, ["train", str(ragged)], "row 2 has 2 columns")


def test_unwritable_out_fails_before_training(tmp_path, capsys):
    data = tmp_path / "animals.csv"
    _labelled_csv(data, n=40)
    err = _fails(capsys, ["train", str(data), "--out", str(tmp_path / "no" / "m.npz")],
                 "`--out`", "m.npz")
    assert len(err.strip().splitlines()) == 1 and "training" not in err
    _fails(capsys, ["train", str(data), "--out", str(tmp_path)], "`--out`", "directory")


def test_nan_labels_can_be_dropped(tmp_path, capsys):
    data = tmp_path / "nan.csv"
    data.write_text("a,b,y\n1,2,0\n3,4,nan\n5,6,1\n7,8,1\n")
    assert cli.main(["train", str(data), "--drop-missing", "--quiet", "--epochs", "1"]) == 0
    assert "on 3 samples" in capsys.readouterr().err


def test_errors_in_a_subprocess_exit_2_and_debug_shows_the_traceback(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(bpcore.__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    argv = [sys.executable, "-m", "bpcore", "train", str(tmp_path / "nope.csv")]
    res = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = subprocess.run(argv + ["--debug"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert res.returncode != 0 and "Traceback" in res.stderr and "FileNotFoundError" in \
        res.stderr
    res = subprocess.run(argv[:3] + ["demo", "--hidden"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr


# ---------------------------------------------------------------------------
# demo and --help
# ---------------------------------------------------------------------------

def test_demo_reports_progress_threads_and_the_ratio_in_words(capsys):
    assert cli.main(["demo", "--steps", "10"]) == 0
    captured = capsys.readouterr()
    assert "bpcore: step 10/10" in captured.err and "NumPy reference: step 10/10" in \
        captured.err
    assert "threads: bpcore 1 (--threads N to change)" in captured.out
    assert re.search(r"bpcore x\d+\.\d\d (faster|slower) than the NumPy reference",
                     captured.out), captured.out
    before = bpcore.get_num_threads()
    assert cli.main(["demo", "--steps", "2", "--threads", "2"]) == 0
    assert "threads: bpcore 2" in capsys.readouterr().out
    assert bpcore.get_num_threads() == before  # restored


def test_demo_plot_without_matplotlib_fails_before_running(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    err = _fails(capsys, ["demo", "--plot", str(tmp_path / "x.png")], "`--plot`",
                 "pip install matplotlib")
    assert len(err.strip().splitlines()) == 1
    assert capsys.readouterr().out == ""  # nothing ran


def test_help_shows_defaults_and_every_demo_option_has_help(capsys):
    for command in ("demo", "train", "predict", "evaluate"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        if command in ("demo", "train"):
            assert "(default:" in text
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = capsys.readouterr().out
    options = text.split("options:")[1]
    for option in ("--steps", "--seed", "--dtype", "--threads", "--plot"):
        block = re.split(r"\n  -", options.split(f"  {option}")[1])[0]
        words = block.split()[1:]  # after the metavar
        assert len(words) >= 3, (option, block)


def test_integer_labels_beyond_64_bits_are_a_user_error(tmp_path, capsys):
    """Found by the fuzzer (tests/test_files.py): an OverflowError escaped as a traceback."""
    path = tmp_path / "big.csv"
    path.write_text("1," + "2" + "4" * 70 + "\n2,3\n")
    assert cli.main(["train", str(path), "--task", "classification", "--target", "1",
                     "--epochs", "1", "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith("task:")]
    assert len(err) == 1 and "error: column 1: " in err[0] and "beyond 64 bits" in err[0], err



@pytest.mark.parametrize("activation", ["gelu", "leaky_relu", "softplus"])
def test_train_takes_every_activation_the_model_has(tmp_path, capsys, activation):
    from bpcore.nn import ACTIVATIONS

    assert activation in ACTIVATIONS
    data = tmp_path / "animals.csv"
    _labelled_csv(data)
    model = _train(tmp_path, data, "--standardize", "--activation", activation)
    assert bpcore.MLP.load(model).activations[0] == activation
    capsys.readouterr()
    assert cli.main(["evaluate", str(model), str(data)]) == 0
    assert "accuracy" in capsys.readouterr().out
