"""Type stub for the fused training step (checked by mypy.stubtest)."""
from typing import Any

import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

_Float = NDArray[np.floating[Any]]
_Int = NDArray[np.integer[Any]]

ACTIVATIONS: dict[str, int]
LOSSES: dict[str, int]
NONFINITE: int
INTERRUPTED: int

@disjoint_base
class Trainer:
    dtype: np.dtype[Any]
    n_params: int
    capacity: int
    def __init__(self, sizes: Any, activations: Any, loss: str, reduction: str,
                 dtype: Any) -> None: ...
    def offsets(self) -> tuple[_Int, _Int]: ...
    def forward(self, params: _Float, x: _Float, out: _Float) -> _Float: ...
    def evaluate(self, params: _Float, x: _Float, y: NDArray[Any]) -> float: ...
    def loss_and_grad(self, params: _Float, x: _Float, y: NDArray[Any],
                      grads: _Float) -> tuple[int, float]: ...
    def sgd(self, params: _Float, grads: _Float, velocity: _Float | None, lr: float,
            momentum: float, weight_decay: float, nesterov: bool) -> None: ...
    def train_step(self, params: _Float, grads: _Float, velocity: _Float | None, x: _Float,
                   y: NDArray[Any], lr: float, momentum: float, weight_decay: float,
                   nesterov: bool) -> tuple[int, float]: ...
    def train_step_fast(self, params: _Float, grads: _Float, velocity: _Float | None,
                        x: Any, y: Any, lr: Any, momentum: Any, weight_decay: Any,
                        nesterov: Any) -> tuple[int, float] | None: ...
    def train_epoch(self, params: _Float, grads: _Float, velocity: _Float | None, x: _Float,
                    y: NDArray[Any], order: _Int | None, batch_size: int, lr: float,
                    momentum: float, weight_decay: float,
                    nesterov: bool) -> tuple[int, float, int]: ...
    def loss_and_grad_begin(self, params: _Float, x: _Float,
                            y: NDArray[Any]) -> tuple[int, float]: ...
    def backward_layer(self, params: _Float, x: _Float, grads: _Float, layer: int) -> int: ...
