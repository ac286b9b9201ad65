"""Type stub for bpcore.nn (tests/test_types.py checks it against the runtime)."""
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray
from typing_extensions import Self

from . import reference_core
from ._step import Trainer, UpdateRule

_Float = NDArray[np.floating[Any]]
_Seed = int | np.random.Generator | None
_Activation = Literal["identity", "relu", "sigmoid", "tanh", "leaky_relu", "elu", "gelu",
                      "gelu_tanh", "silu", "softplus"]
_OutputActivation = Literal["identity", "relu", "sigmoid", "tanh", "leaky_relu", "elu", "gelu",
                            "gelu_tanh", "silu", "softplus", "softmax"]
_Loss = Literal["mse", "cross_entropy", "binary_cross_entropy", "l1", "huber", "smooth_l1"]
_Reduction = Literal["mean", "sum", "half_sum", "half_mean"]
_Backend = Literal["compiled", "reference"]
_Optimizer = Literal["sgd", "adam", "adamw", "rmsprop"]
_Decay = Literal["all", "weights"]
_Schedule = Literal["constant", "invscaling", "adaptive", "step", "exponential", "cosine",
                    "onecycle"]

__all__ = ["MLP"]

ACTIVATIONS: Final[tuple[str, ...]]
OUTPUT_ACTIVATIONS: Final[tuple[str, ...]]
LOSSES: Final[tuple[str, ...]]
REGRESSION_LOSSES: Final[tuple[str, ...]]
LOSS_OPTIONS: Final[dict[str, dict[str, Any]]]
OPTIMIZERS: Final[tuple[str, ...]]
DECAYS: Final[tuple[str, ...]]
SCHEDULES: Final[tuple[str, ...]]
INITS: Final[tuple[str, ...]]
BACKENDS: Final[tuple[str, ...]]

class MLP:
    layer_sizes: list[int]
    activations: list[str]
    activation_options: dict[str, float]
    loss_options: dict[str, Any]
    loss: str
    reduction: str
    dtype: np.dtype[Any]
    backend: str
    weights: list[_Float]       # views into the parameter block
    biases: list[_Float]
    dropout: tuple[float, ...]  # one probability per hidden layer
    compute_dtype: Literal["bfloat16"] | None

    def __init__(self, layer_sizes: Sequence[int], *,
                 activation: _Activation | Sequence[_Activation] = "relu",
                 output_activation: _OutputActivation | None = None, loss: _Loss = "mse",
                 reduction: _Reduction = "mean", dtype: DTypeLike = "float32", seed: _Seed = None,
                 init: Literal["auto", "normal", "glorot", "he"] = "auto",
                 backend: _Backend = "compiled",
                 dropout: float | Sequence[float] | None = None,
                 activation_options: dict[str, float] | None = None,
                 loss_options: dict[str, Any] | None = None,
                 compute_dtype: Literal["bfloat16"] | None = None) -> None: ...
    @classmethod
    def from_arrays(cls, weights: Sequence[ArrayLike], biases: Sequence[ArrayLike], *,
                    activation: _Activation | Sequence[_Activation] = "relu",
                    output_activation: _OutputActivation | None = None, loss: _Loss = "mse",
                    reduction: _Reduction = "mean", dtype: DTypeLike | None = None,
                    backend: _Backend = "compiled",
                    activation_options: dict[str, float] | None = None,
                    loss_options: dict[str, Any] | None = None,
                    compute_dtype: Literal["bfloat16"] | None = None) -> Self: ...
    @property
    def n_params(self) -> int: ...
    @property
    def parameters(self) -> _Float: ...
    def reset_optimizer(self) -> None: ...
    def predict(self, x: ArrayLike, out: _Float | None = None) -> _Float: ...
    def forward(self, x: ArrayLike, out: _Float | None = None) -> _Float: ...
    def evaluate(self, x: ArrayLike, y: ArrayLike) -> float: ...
    def score(self, x: ArrayLike, y: ArrayLike, *,
              sample_weight: ArrayLike | None = None) -> float: ...
    def loss_and_grads(self, x: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None
                       ) -> tuple[float, tuple[list[_Float], list[_Float]]]: ...
    def train_step(self, x: ArrayLike, y: ArrayLike, *, lr: float | None = None,
                   momentum: float = 0.0, weight_decay: float | None = None,
                   nesterov: bool = False,
                   optimizer: _Optimizer = "sgd", betas: tuple[float, float] = (0.9, 0.999),
                   eps: float = 1e-8, decay: _Decay = "all",
                   sample_weight: ArrayLike | None = None, alpha: float = 0.99,
                   centered: bool = False, clip_grad_norm: float | None = None,
                   clip_grad_value: float | None = None) -> float: ...
    def fit(self, x: ArrayLike, y: ArrayLike, *, epochs: int = 10, batch_size: int = 32,
            lr: float | None = None, momentum: float = 0.0, weight_decay: float | None = None,
            nesterov: bool = False, shuffle: bool = True, seed: _Seed = None,
            validation_data: tuple[ArrayLike, ArrayLike] | None = None, progress: bool = False,
            callback: Callable[[int, dict[str, float]], object] | None = None,
            optimizer: _Optimizer = "sgd", betas: tuple[float, float] = (0.9, 0.999),
            eps: float = 1e-8, decay: _Decay = "all", sample_weight: ArrayLike | None = None,
            schedule: _Schedule | Callable[[int], float] = "constant",
            power_t: float = 0.5, early_stopping: bool = False, patience: int = 10,
            tol: float = 1e-4, metrics: Sequence[str] = (),
            verbose: int = 0, alpha: float = 0.99, centered: bool = False,
            clip_grad_norm: float | None = None, clip_grad_value: float | None = None,
            schedule_options: dict[str, Any] | None = None) -> dict[str, list[float]]: ...
    def save(self, path: str | os.PathLike[str]) -> None: ...
    @classmethod
    def load(cls, path: str | os.PathLike[str], *, backend: _Backend = "compiled") -> Self: ...
    # Deployment (bpcore.export; onnx / torch are optional, so their types are Any here).
    def to_onnx(self, path: str | os.PathLike[str] | None = None, *,
                opset: int | None = None) -> Any: ...
    def to_torch(self) -> Any: ...
    @classmethod
    def from_torch(cls, module: Any, *, loss: _Loss | None = None,
                   backend: _Backend = "compiled") -> Self: ...

    # The model's side of the core's interface (bpcore.distributed, bpcore.sklearn).
    @property
    def core(self) -> Trainer | reference_core.Trainer: ...
    @property
    def lock(self) -> threading.RLock: ...
    velocity: _Float | None  # a property: assign an array to restore, None to drop
    def prepare_inputs(self, x: ArrayLike, y: ArrayLike | None = None, *, min_rows: int = 1,
                       need_y: bool = True) -> tuple[_Float, NDArray[Any] | None]: ...
    @staticmethod
    def check_sgd(lr: float, momentum: float, weight_decay: float,
                  nesterov: bool) -> tuple[float, float, float, bool]: ...
    def update_rule(self, optimizer: _Optimizer = "sgd", *, lr: float, momentum: float = 0.0,
                    weight_decay: float = 0.0, nesterov: bool = False, beta1: float = 0.9,
                    beta2: float = 0.999, eps: float = 1e-8, weights_only: bool = False,
                    alpha: float = 0.99, centered: bool = False,
                    clip_grad_norm: float | None = None, clip_grad_value: float | None = None
                    ) -> tuple[UpdateRule | reference_core.UpdateRule,
                               tuple[_Float | None, ...]]: ...
    def apply_update(self, grads: _Float, *, lr: float, momentum: float = 0.0,
                     weight_decay: float | None = None, nesterov: bool = False,
                     optimizer: _Optimizer = "sgd", betas: tuple[float, float] = (0.9, 0.999),
                     eps: float = 1e-8, decay: _Decay = "all", alpha: float = 0.99,
                     centered: bool = False, clip_grad_norm: float | None = None,
                     clip_grad_value: float | None = None) -> None: ...

NONFINITE: Final[int]

class Progress:
    def __init__(self, total: int, enabled: bool) -> None: ...
    def update(self, logs: dict[str, float]) -> None: ...
    def close(self) -> None: ...

# Private helpers that bpcore's other modules import.
def _aligned_zeros(n: int, dtype: Any, align: int = 64) -> _Float: ...
def _rng(seed: _Seed) -> np.random.Generator: ...
