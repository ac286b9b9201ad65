"""bpcore.schedules: every rate equals PyTorch's scheduler's, float for float, over whole fits."""
import math

import pytest
from conftest import import_oracle

from bpcore import schedules as S


def _torch_rates(make, epochs, steps=1, lr=0.1, optimizer="SGD", momentum_key=None):
    """Rates (and momenta) PyTorch's scheduler sets over ``epochs * steps`` optimizer steps."""
    torch = import_oracle("torch")
    param = torch.zeros(1, requires_grad=True)
    opt = getattr(torch.optim, optimizer)([param], lr=lr)
    sched = make(torch.optim.lr_scheduler, opt)
    rates, momenta = [], []
    for _ in range(epochs * steps):
        group = opt.param_groups[0]
        rates.append(group["lr"])
        if momentum_key is not None:
            momenta.append(group["betas"][0] if momentum_key == "betas" else group["momentum"])
        param.grad = torch.ones(1)
        opt.step()
        sched.step()
    return rates, momenta


EPOCH_CASES = [
    ("step", dict(step_size=7, gamma=0.5), lambda L, o: L.StepLR(o, 7, gamma=0.5)),
    ("step", dict(step_size=1), lambda L, o: L.StepLR(o, 1)),
    ("exponential", dict(gamma=0.97), lambda L, o: L.ExponentialLR(o, 0.97)),
    ("cosine", {}, lambda L, o: L.CosineAnnealingLR(o, 120)),
    ("cosine", dict(T_max=37, eta_min=1e-3), lambda L, o: L.CosineAnnealingLR(o, 37, 1e-3)),
    ("cosine", dict(warmup_epochs=10, eta_min=1e-4), lambda L, o: L.SequentialLR(
        o, [L.LinearLR(o, 1 / 3, total_iters=10), L.CosineAnnealingLR(o, 110, 1e-4)], [10])),
    ("cosine", dict(warmup_epochs=5, warmup_start_factor=0.1, T_max=20), lambda L, o:
     L.SequentialLR(o, [L.LinearLR(o, 0.1, total_iters=5), L.CosineAnnealingLR(o, 20)], [5])),
]


@pytest.mark.parametrize("schedule, options, make", EPOCH_CASES)
def test_epoch_schedules_equal_pytorchs_over_120_epochs(schedule, options, make):
    expected, _ = _torch_rates(make, 120)
    rates, momenta = S.learning_rates(schedule, 0.1, epochs=120, options=options)
    assert momenta is None
    assert rates == expected  # the same floats: PyTorch's recursion, step for step


ONECYCLE_CASES = [
    ({}, dict()),
    (dict(max_lr=0.3, pct_start=0.25, div_factor=10.0, final_div_factor=100.0),
     dict(max_lr=0.3, pct_start=0.25, div_factor=10.0, final_div_factor=100.0)),
    (dict(anneal_strategy="linear", three_phase=True, base_momentum=0.8, max_momentum=0.9),
     dict(anneal_strategy="linear", three_phase=True, base_momentum=0.8, max_momentum=0.9)),
    (dict(cycle_momentum=False), dict(cycle_momentum=False)),
]


@pytest.mark.parametrize("optimizer, key", [("SGD", "momentum"), ("Adam", "betas")])
@pytest.mark.parametrize("options, torch_options", ONECYCLE_CASES)
def test_onecycle_equals_pytorchs_per_batch_with_its_momentum(options, torch_options,
                                                             optimizer, key):
    epochs, steps = 8, 13
    torch_options = dict(torch_options)
    max_lr = torch_options.pop("max_lr", 0.1)
    expected, expected_m = _torch_rates(
        lambda L, o: L.OneCycleLR(o, max_lr, epochs=epochs, steps_per_epoch=steps,
                                  **torch_options),
        epochs, steps, optimizer=optimizer,
        momentum_key=key if options.get("cycle_momentum", True) else None)
    rates, momenta = S.learning_rates("onecycle", 0.1, epochs=epochs, steps_per_epoch=steps,
                                      options=options)
    assert rates == expected
    assert momenta == (expected_m or None)


@pytest.mark.parametrize("schedule, options, exc, words", [
    ("step", {}, ValueError, "'step_size'"),
    ("exponential", {}, ValueError, "'gamma'"),
    ("step", dict(step_size=0), ValueError, "schedule_options['step_size']"),
    ("step", dict(step_size=2.5), TypeError, "schedule_options['step_size']"),
    ("step", dict(step_size=2, gamma=-1.0), ValueError, "schedule_options['gamma']"),
    ("exponential", dict(gamma=math.nan), ValueError, "schedule_options['gamma']"),
    ("cosine", dict(T_max=0), ValueError, "schedule_options['T_max']"),
    ("cosine", dict(eta_min="0"), TypeError, "schedule_options['eta_min']"),
    ("cosine", dict(warmup_epochs=-1), ValueError, "schedule_options['warmup_epochs']"),
    ("cosine", dict(warmup_start_factor=0.0), ValueError,
     "schedule_options['warmup_start_factor']"),
    ("cosine", dict(warmup_start_factor=2.0), ValueError,
     "schedule_options['warmup_start_factor']"),
    ("cosine", dict(gamma=0.5), ValueError, "'gamma'"),
    ("onecycle", dict(pct_start=1.5), ValueError, "schedule_options['pct_start']"),
    ("onecycle", dict(anneal_strategy="exp"), ValueError,
     "schedule_options['anneal_strategy']"),
    ("onecycle", dict(cycle_momentum=1), TypeError, "schedule_options['cycle_momentum']"),
    ("onecycle", dict(max_momentum=1.0), ValueError, "schedule_options['max_momentum']"),
    ("onecycle", dict(div_factor=0.0), ValueError, "schedule_options['div_factor']"),
    ("onecycle", [("max_lr", 1.0)], TypeError, "schedule_options"),
    ("linear", {}, ValueError, "schedule"),
])
def test_bad_options_name_the_option(schedule, options, exc, words):
    with pytest.raises(exc, match=r"`?" + words.replace("[", r"\[").replace("]", r"\]")):
        S.learning_rates(schedule, 0.1, epochs=10, steps_per_epoch=3, options=options)


def test_a_callable_schedules_rate_is_checked():
    assert S.check_rate(0.5, 3) == 0.5
    with pytest.raises(ValueError, match="`schedule` returned -1.0 for epoch 3"):
        S.check_rate(-1.0, 3)
    with pytest.raises(TypeError, match="`schedule` returned None"):
        S.check_rate(None, 0)
