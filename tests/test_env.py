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


# The two choice switches (_env.choice): each value, and a bad one named with its switch.
CHOICES = {"BPCORE_FORCE_KERNEL": _env.force_kernel, "BPCORE_FORCE_BF16": _env.force_bf16}


@pytest.mark.parametrize("switch, value, want", [
    ("BPCORE_FORCE_KERNEL", None, None), ("BPCORE_FORCE_KERNEL", "", None),
    ("BPCORE_FORCE_KERNEL", " ", None), ("BPCORE_FORCE_KERNEL", "avx512", "avx512"),
    ("BPCORE_FORCE_KERNEL", "AVX2", "avx2"), ("BPCORE_FORCE_KERNEL", " portable ", "portable"),
    ("BPCORE_FORCE_BF16", None, None), ("BPCORE_FORCE_BF16", "", None),
    ("BPCORE_FORCE_BF16", "native", "native"), ("BPCORE_FORCE_BF16", " EMULATED ", "emulated")])
def test_choice_switch_values(monkeypatch, switch, value, want):
    if value is None:
        monkeypatch.delenv(switch, raising=False)
    else:
        monkeypatch.setenv(switch, value)
    assert CHOICES[switch]() == want


@pytest.mark.parametrize("switch, bad", [("BPCORE_FORCE_KERNEL", "sse9"),
                                         ("BPCORE_FORCE_BF16", "fp8")])
def test_choice_switch_bad_value_names_the_switch(monkeypatch, switch, bad):
    monkeypatch.setenv(switch, bad)
    with pytest.raises(ValueError, match=f"`{switch}` must be one of.*'{bad}'"):
        CHOICES[switch]()
