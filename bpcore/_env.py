"""Every ``BPCORE_*`` environment switch of the installed package, read in one place.

The build's switches (``BPCORE_DEBUG``, ``BPCORE_SANITIZE``, ``BPCORE_NATIVE``,
``BPCORE_NO_OPENMP``, ``BPCORE_ANNOTATE``) are read by ``setup.py`` with the
same rule; at run time:

``BPCORE_FORCE_PORTABLE``
    Use the portable kernels of every family (GEMM tiles, vector math,
    optimizer updates) even where the CPU has AVX2+FMA.  Read once, at import.

``BPCORE_FORCE_KERNEL=avx512|avx2|portable``
    The GEMM's micro-kernels (``cpu_features()["kernels"]["gemm"]``; the other
    families follow ``BPCORE_FORCE_PORTABLE`` only).  Unset or empty: the best
    this CPU runs.  A kernel this CPU cannot run gives a ``RuntimeWarning`` at
    import and the best one it can; ``BPCORE_FORCE_PORTABLE`` on wins over it.
    Read once, at import.

A switch is off when unset or one of "", "0", "false", "no", "off" (any case),
and on otherwise: ``=0`` and ``=false`` mean off everywhere.
"""
import os

__all__ = ["flag", "force_kernel", "force_portable"]

_OFF = ("", "0", "false", "no", "off")


def flag(name):
    """Whether the switch ``name`` is on (see the module docstring for the rule)."""
    return os.environ.get(name, "").strip().lower() not in _OFF


def force_portable():
    """``BPCORE_FORCE_PORTABLE``: the portable kernels in every family."""
    return flag("BPCORE_FORCE_PORTABLE")


FORCE_KERNEL_VALUES = ("avx512", "avx2", "portable")


def force_kernel():
    """``BPCORE_FORCE_KERNEL``: one of ``FORCE_KERNEL_VALUES`` (any case), or None if unset."""
    value = os.environ.get("BPCORE_FORCE_KERNEL", "").strip().lower()
    if not value:
        return None
    if value not in FORCE_KERNEL_VALUES:
        raise ValueError(f"`BPCORE_FORCE_KERNEL` must be one of "
                         f"{', '.join(map(repr, FORCE_KERNEL_VALUES))} (or unset); got "
                         f"{os.environ['BPCORE_FORCE_KERNEL']!r}")
    return value
