"""Learning-rate schedules, stepped as PyTorch's ``torch.optim.lr_scheduler`` steps them.

Each schedule here is a plain function from its settings to the whole list
of rates of a fit, so that ``MLP.fit`` can hand a per-batch schedule to the
compiled epoch as a table (no Python per batch).  The arithmetic is
PyTorch's own, step for step, in Python floats: StepLR, ExponentialLR and
CosineAnnealingLR are *recursive* in PyTorch (each rate is computed from the
previous one, not from a closed form), and so are they here, so the rates are
the same floats, not merely close ones (tests/test_schedules.py compares them
with PyTorch's schedulers over whole fits).

=============  =================================  ======================================
schedule       PyTorch                            stepped
=============  =================================  ======================================
"step"         StepLR(step_size, gamma=0.1)       per epoch
"exponential"  ExponentialLR(gamma)               per epoch
"cosine"       CosineAnnealingLR(T_max, eta_min)  per epoch; with ``warmup_epochs`` > 0:
               SequentialLR([LinearLR(            LinearLR for the first warm-up epochs,
               warmup_start_factor), cosine])     then the cosine with T_max = epochs - warm-up
"onecycle"     OneCycleLR(max_lr, ...)            per batch, with its momentum cycling
=============  =================================  ======================================
"""
import math
import numbers

from . import _validate as V

__all__ = ["SCHEDULES", "learning_rates", "PER_BATCH"]

SCHEDULES = ("step", "exponential", "cosine", "onecycle")
PER_BATCH = ("onecycle",)

# Each schedule's options and their defaults (None: required; "epochs": the fit's length).
_OPTIONS = {
    "step": {"step_size": None, "gamma": 0.1},
    "exponential": {"gamma": None},
    "cosine": {"T_max": "epochs", "eta_min": 0.0, "warmup_epochs": 0,
               "warmup_start_factor": 1.0 / 3.0},
    "onecycle": {"max_lr": "lr", "pct_start": 0.3, "anneal_strategy": "cos",
                 "cycle_momentum": True, "base_momentum": 0.85, "max_momentum": 0.95,
                 "div_factor": 25.0, "final_div_factor": 1e4, "three_phase": False},
}


def _options(schedule, options, lr, epochs):
    """The schedule's options with defaults filled in, each checked (named in messages)."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"`schedule_options` must be a dict; got {type(options).__name__}")
    known = _OPTIONS[schedule]
    unknown = sorted(set(options) - set(known), key=str)
    if unknown:
        raise ValueError(f"`schedule_options` has no {unknown[0]!r} for schedule="
                         f"{schedule!r}; it takes {', '.join(map(repr, known))}")
    out = {}
    for key, default in known.items():
        name = f"schedule_options['{key}']"
        if key not in options:
            if default is None:
                raise ValueError(f"`schedule_options` needs {key!r} for schedule={schedule!r}")
            out[key] = None if default == "epochs" else (lr if default == "lr" else default)
            continue
        value = options[key]
        if key in ("step_size", "T_max", "warmup_epochs"):
            out[key] = V.check_int(name, value, minimum=0 if key == "warmup_epochs" else 1)
        elif key == "anneal_strategy":
            out[key] = V.check_choice(name, value, ("cos", "linear"))
        elif key in ("cycle_momentum", "three_phase"):
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be a bool; got {value!r}")
            out[key] = value
        elif key == "pct_start":
            out[key] = V.check_real(name, value, minimum=0.0, maximum=1.0)
        elif key in ("base_momentum", "max_momentum"):
            out[key] = V.check_real(name, value, minimum=0.0, maximum=1.0)
            if out[key] >= 1.0:
                raise ValueError(f"`{name}` must be < 1; got {out[key]}")
        elif key in ("gamma", "div_factor", "final_div_factor", "warmup_start_factor",
                     "max_lr"):
            out[key] = V.check_real(name, value, minimum=0.0,
                                    strict_min=key != "max_lr" and key != "gamma")
        else:  # eta_min
            out[key] = V.check_real(name, value, minimum=0.0)
    if schedule == "cosine":
        if out["warmup_start_factor"] > 1:
            raise ValueError(f"`schedule_options['warmup_start_factor']` must be in (0, 1]; "
                             f"got {out['warmup_start_factor']}")
        if out["T_max"] is None:
            out["T_max"] = max(epochs - out["warmup_epochs"], 1)
    return out


def learning_rates(schedule, lr, *, epochs, steps_per_epoch=1, options=None):
    """Every rate of a fit under ``schedule``, as PyTorch's scheduler would set them.

    Parameters
    ----------
    schedule : {"step", "exponential", "cosine", "onecycle"}
    lr : float
        The optimizer's initial rate (PyTorch's ``base_lr``; "onecycle": the
        default ``max_lr``).
    epochs : int
        The fit's epochs.
    steps_per_epoch : int
        Batches per epoch ("onecycle" only: its total_steps is epochs * steps_per_epoch).
    options : dict, optional
        The scheduler's arguments (module docstring); unknown keys are a ``ValueError``.

    Returns
    -------
    rates : list of float
        One per epoch, or one per batch for "onecycle" (the rate of that epoch / batch).
    momenta : list of float or None
        "onecycle" with ``cycle_momentum``: each batch's momentum (SGD, RMSprop)
        or beta1 (Adam, AdamW), as OneCycleLR sets it; else None.
    """
    schedule = V.check_choice("schedule", schedule, SCHEDULES)
    opts = _options(schedule, options, lr, epochs)
    if schedule == "onecycle":
        return _onecycle(epochs * steps_per_epoch, **opts)
    step = {"step": _step_lr, "exponential": _exponential_lr, "cosine": _cosine_lr}[schedule]
    return step(lr, epochs, **opts), None


def _step_lr(lr, epochs, step_size, gamma):
    """StepLR.get_lr: times gamma at each non-zero multiple of step_size (recursively)."""
    rates = []
    for epoch in range(epochs):
        if epoch != 0 and epoch % step_size == 0:
            lr = lr * gamma
        rates.append(lr)
    return rates


def _exponential_lr(lr, epochs, gamma):
    """ExponentialLR.get_lr: times gamma every epoch after the first (recursively)."""
    rates = []
    for epoch in range(epochs):
        if epoch != 0:
            lr = lr * gamma
        rates.append(lr)
    return rates


def _cosine_step(rate, base_lr, k, T_max, eta_min):
    """CosineAnnealingLR.get_lr at last_epoch = k >= 1 from the previous rate (recursive form)."""
    if (k - 1 - T_max) % (2 * T_max) == 0:
        return rate + (base_lr - eta_min) * (1 - math.cos(math.pi / T_max)) / 2
    return ((1 + math.cos(math.pi * k / T_max)) / (1 + math.cos(math.pi * (k - 1) / T_max))
            * (rate - eta_min) + eta_min)


def _cosine_lr(lr, epochs, T_max, eta_min, warmup_epochs, warmup_start_factor):
    """CosineAnnealingLR, after LinearLR's warm-up as SequentialLR chains them.

    NOTE: SequentialLR starts the cosine at the milestone with its closed form
    at epoch 0 (``_update_lr(0)``), eta_min + (base_lr - eta_min) * (1 + cos 0) / 2,
    not with the warm-up's last rate; the epochs after it are recursive again.
    """
    rates, rate = [], lr
    for epoch in range(epochs):
        if epoch < warmup_epochs:
            if epoch == 0:
                rate = lr * warmup_start_factor
            else:  # LinearLR.get_lr, end_factor 1
                rate = rate * (1.0 + (1.0 - warmup_start_factor) / (
                    warmup_epochs * warmup_start_factor
                    + (epoch - 1) * (1.0 - warmup_start_factor)))
        elif epoch == warmup_epochs:
            rate = lr if warmup_epochs == 0 else (
                eta_min + (lr - eta_min) * (1 + math.cos(0.0)) / 2)
        else:
            rate = _cosine_step(rate, lr, epoch - warmup_epochs, T_max, eta_min)
        rates.append(rate)
    return rates


def _onecycle(total_steps, max_lr, pct_start, anneal_strategy, cycle_momentum, base_momentum,
              max_momentum, div_factor, final_div_factor, three_phase):
    """OneCycleLR.get_lr at steps 0 .. total_steps - 1 (closed form per step)."""
    initial_lr = max_lr / div_factor
    min_lr = initial_lr / final_div_factor
    if three_phase:
        phases = [(float(pct_start * total_steps) - 1, initial_lr, max_lr, max_momentum,
                   base_momentum),
                  (float(2 * pct_start * total_steps) - 2, max_lr, initial_lr, base_momentum,
                   max_momentum),
                  (total_steps - 1, initial_lr, min_lr, max_momentum, max_momentum)]
    else:
        phases = [(float(pct_start * total_steps) - 1, initial_lr, max_lr, max_momentum,
                   base_momentum),
                  (total_steps - 1, max_lr, min_lr, base_momentum, max_momentum)]

    def anneal(start, end, pct):
        if anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    rates, momenta = [], []
    for step in range(total_steps):
        start_step = 0.0
        for i, (end_step, lr0, lr1, m0, m1) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                # NOTE: a phase of zero length (total_steps 1, or pct_start 0)
                # divides by zero in PyTorch; here it is the phase's end.
                span = end_step - start_step
                pct = (step - start_step) / span if span != 0 else 1.0
                rates.append(anneal(lr0, lr1, pct))
                momenta.append(anneal(m0, m1, pct))
                break
            start_step = end_step
    return rates, (momenta if cycle_momentum else None)


def check_rate(value, epoch):
    """A callable schedule's rate for ``epoch``: a finite real >= 0, named in messages."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`schedule` returned {value!r} for epoch {epoch}; it must return a "
                        f"real learning rate")
    rate = float(value)
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"`schedule` returned {rate} for epoch {epoch}; it must return a "
                         f"finite learning rate >= 0")
    return rate
