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

``BPCORE_FORCE_BF16=amx|native|emulated``
    The path of ``compute_dtype="bfloat16"`` products
    (``cpu_features()["bf16"]``): ``amx``, the AMX tiles (TDPBF16PS); ``native``,
    the AVX512_BF16 tile (vdpbf16ps); ``emulated``, rounded float32 operands
    through the float32 kernel.  Unset or empty: amx where the CPU has AMX-BF16
    and Linux grants this process the tile state, else native where it has
    AVX512_BF16.  A path this
    CPU cannot run gives a ``RuntimeWarning`` at import and the emulated one;
    ``BPCORE_FORCE_PORTABLE`` on means emulated.  Read once, at import.

A switch is off when unset or one of "", "0", "false", "no", "off" (any case),
and on otherwise: ``=0`` and ``=false`` mean off everywhere.
"""
import os

__all__ = ["choice", "flag", "force_bf16", "force_kernel", "force_portable"]

_OFF = ("", "0", "false", "no", "off")


def flag(name):
    """Whether the switch ``name`` is on (see the module docstring for the rule)."""
    return os.environ.get(name, "").strip().lower() not in _OFF


def force_portable():
    """``BPCORE_FORCE_PORTABLE``: the portable kernels in every family."""
    return flag("BPCORE_FORCE_PORTABLE")


FORCE_KERNEL_VALUES = ("avx512", "avx2", "portable")


def choice(name, values):
    """The switch ``name`` as one of ``values`` (any case, spaces stripped), or None if
    unset or empty; another value is a ValueError naming the switch."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value not in values:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, values))} (or unset); "
                         f"got {os.environ[name]!r}")
    return value


def force_kernel():
    """``BPCORE_FORCE_KERNEL``: one of ``FORCE_KERNEL_VALUES`` (any case), or None if unset."""
    return choice("BPCORE_FORCE_KERNEL", FORCE_KERNEL_VALUES)


FORCE_BF16_VALUES = ("amx", "native", "emulated")


def force_bf16():
    """``BPCORE_FORCE_BF16``: one of ``FORCE_BF16_VALUES`` (any case), or None if unset."""
    return choice("BPCORE_FORCE_BF16", FORCE_BF16_VALUES)
