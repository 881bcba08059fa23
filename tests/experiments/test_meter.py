"""The race's three measures: FLOPs against the known count of a linear layer, CPU time
against wall time for busy and idle code."""

import time

import pytest
import torch
from torch import nn

from kooptrain.experiments.harness.meter import Meter, count_flops


def test_a_linear_layer_costs_six_n_in_out_flops_forward_and_backward():
    N, n_in, n_out = 32, 20, 10
    layer = nn.Linear(n_in, n_out)
    x = torch.randn(N, n_in, requires_grad=True)

    def step():
        layer(x).sum().backward()

    _, flops = count_flops(step)
    # forward 2 N in out; backward: the input's and the weight's gradients, 2 N in out each
    assert flops == 6 * N * n_in * n_out
    _, forward = count_flops(lambda: layer(x.detach()))
    assert forward == 2 * N * n_in * n_out


def test_the_count_is_the_same_every_time():
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    x = torch.randn(64, 8)
    counts = {count_flops(lambda: model(x).pow(2).mean().backward())[1] for _ in range(3)}
    assert len(counts) == 1


def test_cpu_time_follows_busy_work_and_ignores_sleep():
    m = Meter()
    with m.timing():
        time.sleep(0.05)
    assert m.wall >= 0.05 and m.cpu < 0.03
    busy = Meter()
    with busy.timing():  # spin until this thread has used 50 ms of CPU, however loaded
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.05:
            pass
    assert 0.045 <= busy.cpu <= busy.wall + 0.01  # it counted that CPU, and no more
    busy.add_flops(10)
    busy.add_flops(5)
    assert busy.as_dict()["flops"] == 15 and busy.as_dict()["wall_seconds"] == busy.wall
    with pytest.raises(ValueError, match="negative"):
        busy.add_flops(-1)


def test_time_is_counted_even_when_the_timed_code_raises():
    m = Meter()
    with pytest.raises(KeyError), m.timing():
        time.sleep(0.01)
        raise KeyError("x")
    assert m.wall >= 0.01
