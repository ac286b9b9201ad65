"""bpcore._env: one rule for every BPCORE_* switch, and the switch reaching every kernel family."""
import json

import pytest

import bpcore
from bpcore import _env
from conftest import run_python


@pytest.mark.parametrize("value, on", [(None, False), ("", False), ("0", False),
                                       ("false", False), ("False", False), ("no", False),
                                       ("OFF", False), ("1", True), ("true", True),
                                       ("yes", True)])
def test_one_rule_for_every_switch(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv("BPCORE_FORCE_PORTABLE", raising=False)
    else:
        monkeypatch.setenv("BPCORE_FORCE_PORTABLE", value)
    assert _env.flag("BPCORE_FORCE_PORTABLE") is on
    assert _env.force_portable() is on


def _kernels_under(value):
    code = "import json, bpcore; print(json.dumps(bpcore.cpu_features()['kernels']))"
    env = {} if value is None else {"BPCORE_FORCE_PORTABLE": value}
    return json.loads(run_python(code, **env))


@pytest.mark.parametrize("value", ["1", "true"])
def test_force_portable_reaches_every_family(value):
    assert _kernels_under(value) == {"gemm": "portable", "vector_math": "portable",
                                     "optimizer": "portable"}


@pytest.mark.parametrize("value", ["0", "false", ""])
def test_force_portable_off_reaches_no_family(value):
    features = bpcore.cpu_features()
    if not (features["avx2"] and features["fma"]):
        pytest.skip("this CPU has no AVX2+FMA: every family is portable anyway")
    kernels = _kernels_under(value)
    assert kernels.pop("gemm") == ("avx512" if features["avx512f"] else "avx2_fma")
    assert kernels == {"vector_math": "avx2_fma", "optimizer": "avx2_fma"}


@pytest.mark.parametrize("value, want", [(None, None), ("", None), (" ", None),
                                         ("avx512", "avx512"), ("AVX2", "avx2"),
                                         (" portable ", "portable")])
def test_force_kernel_values(monkeypatch, value, want):
    if value is None:
        monkeypatch.delenv("BPCORE_FORCE_KERNEL", raising=False)
    else:
        monkeypatch.setenv("BPCORE_FORCE_KERNEL", value)
    assert _env.force_kernel() == want


def test_force_kernel_bad_value_names_the_switch(monkeypatch):
    monkeypatch.setenv("BPCORE_FORCE_KERNEL", "sse9")
    with pytest.raises(ValueError, match="`BPCORE_FORCE_KERNEL` must be one of.*'sse9'"):
        _env.force_kernel()


@pytest.mark.parametrize("value, want", [(None, None), ("", None), ("native", "native"),
                                         (" EMULATED ", "emulated")])
def test_force_bf16_values(monkeypatch, value, want):
    if value is None:
        monkeypatch.delenv("BPCORE_FORCE_BF16", raising=False)
    else:
        monkeypatch.setenv("BPCORE_FORCE_BF16", value)
    assert _env.force_bf16() == want


def test_force_bf16_bad_value_names_the_switch(monkeypatch):
    monkeypatch.setenv("BPCORE_FORCE_BF16", "fp8")
    with pytest.raises(ValueError, match="`BPCORE_FORCE_BF16` must be one of.*'fp8'"):
        _env.force_bf16()
