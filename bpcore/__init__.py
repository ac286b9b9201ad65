"""bpcore: compiled CPU kernels for training dense neural networks by back-propagation.

The top-level functions are the compiled twins of :mod:`bpcore.reference`
(same names, same arguments, same ``out`` semantics).  An operation without a
compiled twin yet is exported from the reference, so this API is complete;
:func:`backend_of` tells which one runs.
"""
from . import reference
from . import _gemm, _kernels
from ._gemm import get_num_threads, set_num_threads
from .gradcheck import gradcheck, numerical_gradient, GradcheckError
from .nn import MLP

__version__ = "0.1.0"

_OPS = reference.__all__


def _resolve():
    table = {}
    for name in _OPS:
        compiled = getattr(_kernels, name, getattr(_gemm, name, None))
        table[name] = (compiled, "compiled") if compiled is not None else (
            getattr(reference, name), "reference")
    return table


_TABLE = _resolve()
globals().update({name: fn for name, (fn, _) in _TABLE.items()})


def cpu_features():
    """What the CPU offers and which kernels this process uses, per family.

    Returns
    -------
    dict
        ``{"avx2": bool, "fma": bool, "avx512f": bool, "avx512_bf16": bool,
        "kernel": str, "bf16": str, "openmp": bool, ...,
        "kernels": {"gemm": str, "vector_math": str, "optimizer": str}}``:
        the GEMM's kernel is ``"avx512"``, ``"avx2_fma"`` or ``"portable"``
        (``BPCORE_FORCE_KERNEL`` forces one), the others ``"avx2_fma"`` or
        ``"portable"`` (``BPCORE_FORCE_PORTABLE=1`` makes every family portable).
        ``"kernel"`` is the GEMM's, as before; ``"bf16"`` the path of
        ``matmul(..., compute_dtype="bfloat16")`` (and of every product of a
        ``compute_dtype="bfloat16"`` model): ``"amx"`` (TDPBF16PS tiles) where the
        CPU has AMX-BF16 and Linux grants the tile state (``"amx_bf16"``), else
        ``"avx512_bf16"`` (the vdpbf16ps tile) where the CPU has AVX512_BF16, else
        ``"emulated"`` (rounded float32 operands through the float32 kernel);
        ``BPCORE_FORCE_BF16=amx|native|emulated`` chooses.
    """
    from . import _step

    features = _gemm.cpu_features()
    optimizer = _kernels._optim_kernel()
    if _step.optim_kernel() != optimizer:  # NOTE: one choice, made twice (per module)
        optimizer = f"{optimizer} (step: {_step.optim_kernel()})"
    features["kernels"] = {"gemm": features["kernel"], "vector_math": _kernels._vmath_kernel(),
                           "optimizer": optimizer}
    return features


def backend_of(name):
    """Which implementation ``bpcore.<name>`` runs: ``"compiled"`` or ``"reference"``.

    Parameters
    ----------
    name : str
        A function name of :mod:`bpcore.reference`.

    Returns
    -------
    str
    """
    if name not in _TABLE:
        raise ValueError(f"`name` must be one of bpcore's operations "
                         f"({', '.join(_OPS)}); got {name!r}")
    return _TABLE[name][1]


def get_include():
    """The folders an extension module that cimports bpcore needs on its include paths.

    Pass them as Cython's ``include_path`` (for ``from bpcore._gemm cimport
    gemm`` and ``from bpcore._kernels cimport ...``) and as the extension's
    C ``include_dirs`` (for the headers those declarations include, such as
    ``bp_gemm.h``); see README's "Using bpcore from C or Cython".

    Returns
    -------
    list of str
        Two absolute paths: the directory that contains the ``bpcore``
        package (so that ``bpcore/_gemm.pxd`` is found as ``bpcore._gemm``),
        and ``bpcore/_gemm``, the C headers.
    """
    import os

    package = os.path.dirname(os.path.abspath(__file__))
    return [os.path.dirname(package), os.path.join(package, "_gemm")]


__all__ = list(_OPS) + ["MLP", "reference", "backend_of", "gradcheck", "numerical_gradient",
                        "GradcheckError", "cpu_features", "get_num_threads", "set_num_threads",
                        "get_include", "__version__"]
