"""Type stub for the fused training step (checked by mypy.stubtest)."""
from typing import Any

import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

_Float = NDArray[np.floating[Any]]
_Int = NDArray[np.integer[Any]]

ACTIVATIONS: dict[str, int]
LOSSES: dict[str, int]
SK_SOLVERS: dict[str, int]
OPTIMIZERS: dict[str, int]
NONFINITE: int
INTERRUPTED: int

@disjoint_base
class Trainer:
    dtype: np.dtype[Any]
    n_params: int
    capacity: int
    batches_done: int
    def __init__(self, sizes: Any, activations: Any, loss: str, reduction: str,
                 dtype: Any) -> None: ...
    def offsets(self) -> tuple[_Int, _Int]: ...
    def forward(self, params: _Float, x: _Float, out: _Float) -> _Float: ...
    def evaluate(self, params: _Float, x: _Float, y: NDArray[Any]) -> float: ...
    def loss_and_grad(self, params: _Float, x: _Float, y: NDArray[Any], grads: _Float,
                      sample_weight: _Float | None = None) -> tuple[int, float]: ...
    def update(self, params: _Float, grads: _Float, state1: _Float | None,
               state2: _Float | None, optimizer: str, lr: float, momentum: float = 0.0,
               weight_decay: float = 0.0, nesterov: bool = False, beta1: float = 0.9,
               beta2: float = 0.999, eps: float = 1e-8, step: int = 0,
               weights_only: bool = False) -> int: ...
    def train_epoch_opt(self, params: _Float, grads: _Float, state1: _Float | None,
                        state2: _Float | None, x: _Float, y: NDArray[Any],
                        sample_weight: _Float | None, order: _Int | None, batch_size: int,
                        optimizer: str, lr: float, momentum: float = 0.0,
                        weight_decay: float = 0.0, nesterov: bool = False, beta1: float = 0.9,
                        beta2: float = 0.999, eps: float = 1e-8, step: int = 0,
                        weights_only: bool = False) -> tuple[int, float, int, int]: ...
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
    def sklearn_loss_and_grad(self, params: _Float, x: _Float, y: _Float,
                              sample_weight: _Float | None, alpha: float,
                              grads: _Float) -> tuple[int, float]: ...
    def sklearn_train_epoch(self, params: _Float, grads: _Float, state1: _Float,
                            state2: _Float | None, x: _Float, y: _Float,
                            sample_weight: _Float | None, order: _Int | None, batch_size: int,
                            alpha: float, solver: str, lr: float, momentum: float = 0.0,
                            nesterov: bool = False, beta1: float = 0.9, beta2: float = 0.999,
                            eps: float = 1e-8, t: int = 0) -> tuple[int, float, int, int]: ...
