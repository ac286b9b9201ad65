"""Type stub for bpcore's top level (tests/test_types.py checks it against the runtime).

``bpcore/__init__.py`` picks each operation's implementation at import (the
compiled twin, else the reference); every operation has a compiled twin, so
each name is re-exported from the compiled module that defines it.  Only the
"X as X" imports below are exports (PEP 484); ``bpcore.__all__`` lists the same
names (tests/test_types.py).
"""
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, SupportsFloat

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import reference as reference
from ._gemm import (
    get_num_threads as get_num_threads,
    matmul as matmul,
    set_num_threads as set_num_threads,
)
from ._kernels import (
    adam_update as adam_update,
    adamw_update as adamw_update,
    elu_backward as elu_backward,
    elu_forward as elu_forward,
    gelu_backward as gelu_backward,
    gelu_forward as gelu_forward,
    gelu_tanh_backward as gelu_tanh_backward,
    gelu_tanh_forward as gelu_tanh_forward,
    huber_loss as huber_loss,
    huber_loss_backward as huber_loss_backward,
    identity_backward as identity_backward,
    identity_forward as identity_forward,
    l1_loss as l1_loss,
    l1_loss_backward as l1_loss_backward,
    leaky_relu_backward as leaky_relu_backward,
    leaky_relu_forward as leaky_relu_forward,
    linear_backward as linear_backward,
    linear_forward as linear_forward,
    mse_loss as mse_loss,
    mse_loss_and_grad as mse_loss_and_grad,
    mse_loss_backward as mse_loss_backward,
    relu_backward as relu_backward,
    relu_forward as relu_forward,
    rmsprop_update as rmsprop_update,
    sgd_update as sgd_update,
    sigmoid_backward as sigmoid_backward,
    sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy,
    sigmoid_binary_cross_entropy_backward as sigmoid_binary_cross_entropy_backward,
    sigmoid_forward as sigmoid_forward,
    silu_backward as silu_backward,
    silu_forward as silu_forward,
    sklearn_adam_update as sklearn_adam_update,
    sklearn_sgd_update as sklearn_sgd_update,
    smooth_l1_loss as smooth_l1_loss,
    smooth_l1_loss_backward as smooth_l1_loss_backward,
    softmax_cross_entropy as softmax_cross_entropy,
    softmax_cross_entropy_and_grad as softmax_cross_entropy_and_grad,
    softmax_cross_entropy_backward as softmax_cross_entropy_backward,
    softmax_forward as softmax_forward,
    softplus_backward as softplus_backward,
    softplus_forward as softplus_forward,
    tanh_backward as tanh_backward,
    tanh_forward as tanh_forward,
)
from .gradcheck import GradcheckError as GradcheckError
from .nn import MLP as MLP

__version__: Final[str]

# gradcheck.py has no annotations of its own; its two functions are typed here.
def numerical_gradient(f: Callable[..., SupportsFloat], inputs: Sequence[NDArray[np.float64]],
                       *, eps: float = 1e-6) -> list[NDArray[np.float64]]: ...
def gradcheck(f: Callable[..., SupportsFloat], inputs: Sequence[NDArray[np.float64]],
              analytic: Sequence[ArrayLike], *, eps: float = 1e-6, rtol: float = 1e-5,
              atol: float = 1e-7, raise_exception: bool = True) -> bool: ...
def backend_of(name: str) -> Literal["compiled", "reference"]: ...
def get_include() -> list[str]: ...

def cpu_features() -> dict[str, Any]: ...
