"""Fault matrix, rows 7-8: KeyboardInterrupt or an exception anywhere inside a jump (the
closure, the fit, the prediction, the BatchNorm update, the optimizer-state policy)
leaves the weights, the optimizer state and the buffers exactly as before the jump; a
checkpoint from another run is refused with a clear error and changes nothing."""

import copy
import io

import pytest
import torch
from faultkit import identical, sgd_step, snapshot
from torch import nn

from kooptrain import Forecast, KoopmanAccelerator


def ready(policy="momentum", bn=False, opt_cls=torch.optim.Adam):
    """An accelerator one step before a jump whose candidate would be accepted."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = torch.sin(x[:, :1])
    torch.manual_seed(0)
    layers = [nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)]
    if bn:
        layers.insert(1, nn.BatchNorm1d(8))
    model = nn.Sequential(*layers)
    opt = opt_cls(model.parameters(), lr=1e-2)
    loader = [(x,)] if bn else None
    acc = KoopmanAccelerator(model, opt, window=4, horizons=(2, 4), margin=0.0,
                             optimizer_state=policy, bn_loader=loader, every=1)
    for _ in range(3):
        sgd_step(model, opt, x, y)
        acc.step(lambda: 1.0)
    sgd_step(model, opt, x, y)
    return model, opt, acc, x, y


class Boom(Exception):
    pass


def accepting():
    """A closure whose every candidate beats the one before: the jump is accepted."""
    calls = []

    def closure():
        calls.append(1)
        return 1.0 / len(calls)
    return closure


def state(model, opt):
    m, o = snapshot(model, opt)
    momenta = [mod.momentum for mod in model.modules() if isinstance(mod, nn.BatchNorm1d)]
    return m, o, momenta


@pytest.mark.parametrize("exc", [KeyboardInterrupt, Boom])
@pytest.mark.parametrize("where", ["closure-before", "closure-candidate", "fit", "predict"])
def test_interrupt_inside_a_jump_restores_everything(exc, where, monkeypatch):
    model, opt, acc, x, y = ready()
    before = state(model, opt)
    calls = []

    def closure():
        calls.append(1)
        if (where == "closure-before" and len(calls) == 1) or \
                (where == "closure-candidate" and len(calls) == 2):
            raise exc()
        return torch.tensor(1.0 / len(calls))  # every candidate would be accepted

    def broken(*a, **k):
        raise exc()
    if where == "fit":
        monkeypatch.setattr(acc.recorder, "fit", broken)
    elif where == "predict":
        monkeypatch.setattr(Forecast, "predict", broken)
    with pytest.raises(exc):
        acc.step(closure)
    assert identical(state(model, opt), before)
    assert acc.jumps_accepted == 0


@pytest.mark.parametrize("policy", ["momentum", "reset"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, Boom])
def test_interrupt_during_the_batchnorm_update_restores_weights_state_and_buffers(policy,
                                                                                   exc):
    model, opt, acc, x, y = ready(policy, bn=True)
    before = state(model, opt)

    class Loader:
        def __iter__(self):
            yield (x,)
            raise exc()

    acc.bn_loader = Loader()
    with pytest.raises(exc):
        acc.step(accepting())
    after = state(model, opt)
    assert identical(after, before)
    assert after[2] == before[2]  # BatchNorm momentum back from update_bn's None


def test_interrupt_while_zeroing_momentum_restores_the_optimizer_state(monkeypatch):
    model, opt, acc, x, y = ready("momentum")
    before = state(model, opt)
    calls = []
    orig_zero = torch.Tensor.zero_

    def zero_(self):
        calls.append(1)
        if len(calls) == 3:  # part-way through the policy
            raise KeyboardInterrupt
        return orig_zero(self)

    monkeypatch.setattr(torch.Tensor, "zero_", zero_)
    with pytest.raises(KeyboardInterrupt):
        acc.step(accepting())
    monkeypatch.undo()
    assert len(calls) == 3
    assert identical(state(model, opt), before)


def saved(acc) -> dict:
    buf = io.BytesIO()
    torch.save(acc.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_mismatched_checkpoints_are_refused_and_change_nothing():
    model, opt, acc, x, y = ready()
    mine = saved(acc)
    other_model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    other_opt = torch.optim.Adam(other_model.parameters())
    cases = {
        "another model": saved(KoopmanAccelerator(other_model, other_opt, window=4,
                                                  horizons=(2, 4), every=1)),
        "another granularity": saved(KoopmanAccelerator(model, opt, window=4, horizons=(2, 4),
                                                        granularity="node", every=1)),
        "another window": saved(KoopmanAccelerator(model, opt, window=5, horizons=(2, 4), every=1)),
    }
    unknown = {k: v for k, v in mine.items() if k not in ("kind", "version")}
    newer = {**copy.deepcopy(mine), "version": mine["version"] + 1}
    corrupt = copy.deepcopy(mine)
    corrupt["recorder"]["stores"][0]["buf"] = torch.zeros(2, 2)
    for name, bad in cases.items():
        with pytest.raises(ValueError, match="saved with different") as e:
            acc.load_state_dict(bad)
        assert "start afresh" in str(e.value), name
    with pytest.raises(ValueError, match="not a KoopmanAccelerator state_dict: its 'kind' is "
                                         "None"):
        acc.load_state_dict(unknown)
    with pytest.raises(ValueError, match="has version 3; this kooptrain reads version 2"):
        acc.load_state_dict(newer)
    with pytest.raises(ValueError, match="not a KoopmanAccelerator state_dict: its 'kind' is "
                                         "None"):
        acc.load_state_dict(model.state_dict())  # the model's checkpoint by mistake
    with pytest.raises(ValueError, match="corrupt buffers"):
        acc.load_state_dict(corrupt)
    assert identical(saved(acc), mine)  # nothing was half-loaded
