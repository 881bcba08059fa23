"""Fault matrix, row 6: invalid arguments anywhere in the public API raise ValueError or
TypeError naming the argument and the accepted values; modules without a weight/bias
node structure are partitioned by the documented fallback, exactly."""

import math

import pytest
import torch
from torch import nn

from kooptrain import Forecast, KoopmanAccelerator, KoopmanOperator, Partition, SnapshotRecorder
from kooptrain.accelerator import AcceleratorSettings


def lin():
    return nn.Linear(3, 2)


def acc(**kw):
    m = lin()
    return KoopmanAccelerator(m, torch.optim.SGD(m.parameters(), lr=0.1),
            **({"every": 1, "window": 10} | kw))


def fitted_forecast():
    rec = SnapshotRecorder(lin(), window=3)
    for _ in range(3):
        rec.record()
    return rec.fit()


def fitted():
    return KoopmanOperator().fit(torch.randn(2, 3, 6, dtype=torch.float64))


CASES = [
    # (what, call, exception, words the message must contain)
    ("window < 2", lambda: acc(window=1), ValueError, ["window=1", ">= 2"]),
    ("window not an int", lambda: acc(window=2.5), ValueError, ["window=2.5", "int"]),
    ("settings window < 2", lambda: AcceleratorSettings(window=1), ValueError,
     ["window=1", ">= 2"]),
    ("snapshot", lambda: acc(snapshot="median"), ValueError,
     ["snapshot='median'", "'mean'", "'last'"]),
    ("bn_refresh", lambda: acc(bn_refresh="never"), ValueError,
     ["bn_refresh='never'", "'each'", "'kept'"]),
    ("eval_cost", lambda: acc(eval_cost=0), ValueError, ["eval_cost=0", "positive"]),
    ("chunk", lambda: acc(granularity="quasi-node", chunk=0), ValueError,
     ["chunk=0", "int >= 1"]),
    ("margin", lambda: acc(margin=1.5), ValueError, ["margin=1.5", "[0, 1)"]),
    ("forecast every", lambda: Forecast(fitted_forecast().partition,
                                        fitted_forecast().operators, every=0), ValueError,
     ["every=0", ">= 1"]),
    ("recorder window < 2", lambda: SnapshotRecorder(lin(), window=1), ValueError,
     ["window=1", ">= 2"]),
    ("one snapshot", lambda: KoopmanOperator().fit(torch.ones(3, 1)), ValueError,
     ["at least 2"]),
    ("T < 0", lambda: fitted().predict(-3), ValueError, ["negative"]),
    ("T = -inf", lambda: fitted().predict(-math.inf), TypeError, ["int"]),
    ("T fractional", lambda: fitted().predict(2.5), TypeError, ["whole"]),
    ("granularity", lambda: Partition(lin(), granularity="neuron"), ValueError,
     ["granularity='neuron'", "weight", "quasi-node", "node", "layer", "network"]),
    ("accelerator granularity", lambda: acc(granularity="unit"), ValueError,
     ["granularity='unit'", "network"]),
    ("recorder granularity", lambda: SnapshotRecorder(lin(), granularity="unit"), ValueError,
     ["granularity='unit'", "network"]),
    ("quasi-node without chunk", lambda: Partition(lin(), granularity="quasi-node"), ValueError,
     ["chunk", "positive int"]),
    ("chunk on node", lambda: Partition(lin(), granularity="node", chunk=2), ValueError,
     ["chunk", "quasi-node"]),
    ("observables", lambda: KoopmanOperator(observables="poly").fit(torch.randn(2, 5)), ValueError,
     ["observables", "identity", "affine"]),
    ("stabilize", lambda: acc(stabilize="yes"), ValueError,
     ["stabilize='yes'", "clip", "drop"]),
    ("predictor", lambda: acc(predictor="ema"), ValueError,
     ["predictor='ema'", "koopman", "linear", "average"]),
    ("optimizer_state", lambda: acc(optimizer_state="zero"), ValueError,
     ["optimizer_state='zero'", "keep", "momentum", "reset"]),
    ("horizons", lambda: acc(horizons=(0, 4)), ValueError, ["horizons", "positive ints"]),
    ("margin", lambda: acc(margin=1.5), ValueError, ["margin=1.5", "[0, 1)"]),
    ("storage", lambda: SnapshotRecorder(lin(), storage="disk"), ValueError,
     ["storage='disk'", "window", "streaming", "auto"]),
    ("recorder dtype", lambda: SnapshotRecorder(lin(), dtype=torch.int32), ValueError,
     ["dtype=torch.int32", "floating"]),
    ("accelerator every", lambda: acc(every=0), ValueError, ["every=0", ">= 1"]),
    ("max_backoff", lambda: acc(max_backoff=0), ValueError, ["max_backoff=0", ">= 1"]),
    ("max_history", lambda: acc(max_history=0), ValueError, ["max_history=0", ">= 1"]),
    ("interval", lambda: acc(interval=0), ValueError, ["interval=0", ">= 1 or None"]),
    ("max_residual", lambda: acc(max_residual=-1), ValueError,
     ["max_residual=-1", "positive number or None"]),
    ("max_residual, short window", lambda: acc(max_residual=0.5, window=2), ValueError,
     ["max_residual needs window >= 3"]),
    ("accelerator rank", lambda: acc(rank=0), ValueError, ["rank=0", ">= 1 or None"]),
    ("margin not a number", lambda: acc(margin="0.1"), ValueError, ["margin='0.1'", "[0, 1)"]),
    ("horizons with a bool", lambda: acc(horizons=(True, 2)), ValueError, ["horizons=(True"]),
    ("horizons not a sequence", lambda: acc(horizons=5), ValueError, ["horizons=5"]),
    ("horizons a generator", lambda: acc(horizons=(h for h in (2, 4))), ValueError,
     ["horizons=<generator"]),
    ("params empty", lambda: Partition(lin(), params=[]), ValueError,
     ["no trainable parameters (requires_grad=True) among the given params."]),
    ("model type", lambda: Partition({"w": torch.ones(2)}), TypeError, ["nn.Module"]),
    ("optimizer type", lambda: KoopmanAccelerator(lin(), "adam", every=1, window=10), TypeError,
     ["optimizer", "torch.optim.Optimizer"]),
    ("optimizer of another model", lambda: KoopmanAccelerator(
        lin(), torch.optim.SGD(lin().parameters(), lr=0.1), every=1, window=10), ValueError,
     ["optimizer updates none"]),
    ("params not of the model", lambda: Partition(lin(), params=lin().parameters()),
     ValueError, ["not parameters of the model"]),
    ("params as one tensor", lambda: Partition(lin(), params=torch.ones(2)), TypeError,
     ["iterable of parameters"]),
    # one check per argument, the same in every layer: bools are not counts
    ("accelerator window=True", lambda: acc(window=True), ValueError, ["window=True", "int"]),
    ("accelerator every=True", lambda: acc(every=True), ValueError, ["every=True", "int"]),
    ("recorder every=True", lambda: SnapshotRecorder(lin(), every=True), ValueError,
     ["every=True", "int"]),
    ("recorder window=True", lambda: SnapshotRecorder(lin(), window=True), ValueError,
     ["window=True", "int"]),
    ("interval=True", lambda: acc(interval=True), ValueError, ["interval=True", "int"]),
    ("engine rank=True", lambda: KoopmanOperator(rank=True).fit(torch.randn(2, 5)), ValueError,
     ["rank=True", "int"]),
    ("fixed_point not a bool", lambda: acc(fixed_point=1), TypeError,
     ["fixed_point=1", "True or False"]),
    ("positional engine option", lambda: KoopmanOperator("affine"), TypeError, ["positional"]),
    ("positional granularity", lambda: Partition(lin(), "node"), TypeError, ["positional"]),
    ("no trainable parameters", lambda: Partition(lin().requires_grad_(False)), ValueError,
     ["no trainable parameters (requires_grad=True)."]),
]


@pytest.mark.parametrize("what,call,exc,words", CASES, ids=[c[0] for c in CASES])
def test_invalid_arguments_are_named_with_the_accepted_values(what, call, exc, words):
    with pytest.raises(exc) as e:
        call()
    for w in words:
        assert w in str(e.value), (what, str(e.value))


@pytest.mark.parametrize("bad,exc,words", [
    (lambda: torch.ones(3), ValueError, ["closure()", "scalar", "shape (3,)", ".mean()"]),
    (lambda: torch.ones(2, 2), ValueError, ["scalar", "shape (2, 2)"]),
    (lambda: "low", TypeError, ["closure()", "number", "one-element tensor", "str"]),
    (lambda: None, TypeError, ["closure()", "NoneType"]),
])
def test_a_closure_that_returns_no_scalar_is_refused_before_any_change(bad, exc, words):
    model = lin()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    a = KoopmanAccelerator(model, opt, window=2, horizons=(2,), every=1)
    a.step()
    with torch.no_grad():
        model.weight.add_(0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(exc) as e:
        a.step(bad)
    for w in words:
        assert w in str(e.value)
    assert str(e.value).startswith("closure() must return")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class Exotic(nn.Module):
    """Modules with no weight/bias rows: attention, embedding, norm, a free scalar."""

    def __init__(self):
        super().__init__()
        self.att = nn.MultiheadAttention(4, 2)
        self.emb = nn.Embedding(5, 4)
        self.norm = nn.LayerNorm(4)
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.free = nn.Parameter(torch.randn(3, 2, 2))
        self.lonely_bias = nn.Parameter(torch.randn(3))


@pytest.mark.parametrize("granularity,chunk", [("weight", None), ("quasi-node", 3),
                                               ("node", None), ("layer", None),
                                               ("network", None)])
def test_modules_without_node_structure_use_the_documented_fallback(granularity, chunk):
    model = Exotic()
    part = Partition(model, granularity=granularity, chunk=chunk)
    idx = torch.cat([g.index.reshape(-1) for g in part.groups]).sort().values
    assert torch.equal(idx, torch.arange(part.n_params))  # every scalar exactly once
    vec = part.flatten()
    assert torch.equal(part.scatter(part.gather(vec)), vec)
    back = part.unflatten(vec)
    assert all(torch.equal(back[n], p) for n, p in model.named_parameters())
    if granularity == "node":
        sizes = {(g.size, g.n_blocks) for g in part.groups}
        # LayerNorm: (weight[o], bias[o]) pairs -> 4 nodes of 2; embedding rows -> 5 of 4;
        # attention in_proj rows (12 of 4), in_proj_bias one block of 12, out_proj 4 of 5;
        # free (3, 2, 2) -> 3 rows of 4; the scalar and the lonely bias: one block each
        assert (2, 4) in sizes and (5, 4) in sizes and (1, 1) in sizes and (3, 1) in sizes


def test_the_boundaries_of_accepted_arguments_are_accepted():
    assert acc(horizons=(1,)).horizons == [1]
    assert acc(max_residual=0.5, window=3).max_residual == 0.5
    assert acc(fixed_point=True).fixed_point is True
    assert acc(max_history=1).history.maxlen == 1 and acc(max_backoff=1).max_backoff == 1
    m = lin()
    assert SnapshotRecorder(m, every=1, window=2).every == 1
