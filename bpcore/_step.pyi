"""Type stub for the fused training step (checked by mypy.stubtest)."""
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

_Float = NDArray[np.floating[Any]]
_Int = NDArray[np.integer[Any]]

ACTIVATIONS: dict[str, int]
LOSSES: dict[str, int]
UPDATE_KINDS: dict[str, int]
NONFINITE: int

def optim_kernel() -> str: ...
INTERRUPTED: int

@disjoint_base
class UpdateRule:
    def __init__(self, kind: str, *, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, step: int = 0,
                 weights_only: bool = False) -> None: ...
    @property
    def kind(self) -> str: ...
    @property
    def lr(self) -> float: ...
    @lr.setter
    def lr(self, value: float) -> None: ...
    @property
    def step(self) -> int: ...
    @step.setter
    def step(self, value: int) -> None: ...
    @property
    def stateful(self) -> int: ...

_State = tuple[_Float | None, _Float | None] | None

@disjoint_base
class Trainer:
    dtype: np.dtype[Any]
    n_params: int
    capacity: int
    batches_done: int
    def __init__(self, sizes: Any, activations: Any, loss: str, reduction: str,
                 dtype: Any, alpha: float = 0.0, *,
                 activation_params: Sequence[dict[str, float] | None] | None = None,
                 loss_params: dict[str, Any] | None = None) -> None: ...
    @property
    def alpha(self) -> float: ...
    @alpha.setter
    def alpha(self, value: float) -> None: ...
    def offsets(self) -> tuple[_Int, _Int]: ...
    def forward(self, params: _Float, x: _Float, out: _Float) -> _Float: ...
    def evaluate(self, params: _Float, x: _Float, y: NDArray[Any]) -> float: ...
    def loss_and_grad(self, params: _Float, x: _Float, y: NDArray[Any], grads: _Float,
                      sample_weight: _Float | None = None) -> tuple[int, float]: ...
    def update(self, params: _Float, grads: _Float, state: _State,
               rule: UpdateRule) -> None: ...
    def epoch(self, params: _Float, grads: _Float, state: _State, x: _Float,
              y: NDArray[Any], sample_weight: _Float | None, order: _Int | None,
              batch_size: int, rule: UpdateRule) -> tuple[int, float, int]: ...
    def train_step_fast(self, params: _Float, grads: _Float, velocity: _Float | None,
                        x: Any, y: Any, lr: Any, momentum: Any, weight_decay: Any,
                        nesterov: Any) -> tuple[int, float] | None: ...
    def loss_and_grad_begin(self, params: _Float, x: _Float,
                            y: NDArray[Any]) -> tuple[int, float]: ...
    def backward_layer(self, params: _Float, x: _Float, grads: _Float, layer: int) -> int: ...
