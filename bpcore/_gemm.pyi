"""Type stub for the compiled GEMM (bpcore/_gemm.pyx)."""
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

EPILOGUES: Final[dict[str, int]]
# Added by Cython to every extension module (not API; declared so a bare stubtest passes).
__pyx_capi__: dict[str, Any]
__test__: dict[str, str]

def cpu_features() -> dict[str, Any]: ...
def _runnable_kernels() -> list[str]: ...
def _kernel_blocks(name: str) -> dict[str, dict[str, int]]: ...
def _set_kernel(name: str) -> None: ...
def _choose_kernel() -> str: ...
def _set_path(name: str) -> None: ...
def _set_epilogue_isa(name: str) -> str: ...
def _small_calls() -> int: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def _hold_workers(on: bool) -> None: ...
def _starved_products() -> int: ...
def _default_threads() -> int: ...
def _check_operands(
    a: ArrayLike, b: ArrayLike, trans_a: bool, trans_b: bool, alpha: float, beta: float,
    out: NDArray[np.floating[Any]] | None,
) -> tuple[NDArray[np.floating[Any]], NDArray[np.floating[Any]], bool, bool, float, float,
           NDArray[np.floating[Any]]]: ...
def matmul(
    a: ArrayLike,
    b: ArrayLike,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    alpha: float = 1.0,
    beta: float = 0.0,
    out: NDArray[np.floating[Any]] | None = None,
    compute_dtype: str | None = None,
) -> NDArray[np.floating[Any]]: ...
def _matmul_epilogue(
    a: ArrayLike,
    b: ArrayLike,
    epilogue: str,
    bias: ArrayLike | None = None,
    aux: ArrayLike | None = None,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    alpha: float = 1.0,
    beta: float = 0.0,
    out: NDArray[np.floating[Any]] | None = None,
) -> NDArray[np.floating[Any]]: ...
def _matmul_strided_out(
    a: ArrayLike,
    b: ArrayLike,
    out: NDArray[np.floating[Any]],
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    alpha: float = 1.0,
    beta: float = 0.0,
) -> NDArray[np.floating[Any]]: ...
