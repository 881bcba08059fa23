"""The race's workloads: the models are what the tasks promise (a residual CNN with BatchNorm
of >= 100k weights, a causal pre-norm transformer of >= 4 blocks), the corpus is split by
document and hashed, the schedule warms up then decays, and the scores are held out."""

import math

import pytest
import torch

from kooptrain.experiments.harness.meter import count_flops
from kooptrain.experiments.race.builtin import hnn_heldout_points
from kooptrain.experiments.race.workloads import TASKS, evaluating, workload
from kooptrain.problems.hnn import OscillatorProblem
from kooptrain.problems.lm import TinyGPT, stdlib_corpus


def test_the_cnn_is_residual_with_batchnorm_and_over_100k_weights():
    w = workload("mnist1d-cnn")
    model = w.make_model(0)
    assert sum(p.numel() for p in model.parameters()) >= 100_000
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    assert w.bn_loader() and w.bn_batches >= 1
    x = next(w.sampler(0))[0][:8]
    with evaluating(model):
        assert model(x).shape == (8, 10)
    assert model.training  # the mode is given back


def test_the_transformer_is_causal_and_pre_norm():
    torch.manual_seed(0)
    model = TinyGPT(256, d=32, heads=4, blocks=4, context=16).eval()
    assert len(model.blocks) >= 4
    x = torch.randint(0, 256, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 256  # change only the future of position 9
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :10], b[:, :10])  # no position sees its future
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    block = model.blocks[0]
    seen = []
    block.ln1.register_forward_hook(lambda m, i, o: seen.append("ln1"))
    block.qkv.register_forward_hook(lambda m, i, o: seen.append("attn"))
    with torch.no_grad():
        block(torch.randn(1, 4, 32))
    assert seen == ["ln1", "attn"]  # the norm comes before the attention
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_the_corpus_is_split_by_document_and_hashed(tmp_path):
    for i in range(20):
        (tmp_path / f"m{i:02d}.py").write_text(f"# document {i}\n" + "x = 1\n" * i)
    c = stdlib_corpus(str(tmp_path))
    info = c["info"]
    assert info["documents"] == 20 and info["val_documents"] == 2
    assert info["train_documents"] + info["val_documents"] == 20
    val = bytes(c["val"].tolist()).decode()
    train = bytes(c["train"].tolist()).decode()
    assert "# document 9\n" in val and "# document 19\n" in val  # every tenth, sorted
    assert "# document 9\n" not in train and "# document 0\n" in train
    assert info["train_bytes"] == len(c["train"]) and len(info["sha256"]) == 64
    (tmp_path / "m00.py").write_text("# changed\n")
    assert stdlib_corpus(str(tmp_path))["info"]["sha256"] != info["sha256"]
    with pytest.raises(FileNotFoundError, match="at least 10"):
        stdlib_corpus(str(tmp_path / "nowhere"))


def test_the_lm_task_reads_the_standard_library_and_scores_validation_nats():
    w = workload("lm")
    assert w.info["corpus"]["documents"] > 100 and w.clip and w.info["warmup"]
    model = w.make_model(0)
    assert isinstance(model, TinyGPT)
    # an untrained byte model is close to uniform: log(256) nats per token
    assert w.heldout(model)["heldout"] == pytest.approx(math.log(256), rel=0.05)


def test_the_schedule_warms_up_linearly_then_decays_by_a_cosine_to_a_tenth():
    w = workload("lm", budget=1000)
    opt, sched = w.make_optimizer("adamw", torch.nn.Linear(2, 2))
    lrs = []
    for _ in range(1000):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    base, warm = w.lr["adamw"], round(w.info["warmup"] * 1000)
    assert lrs[0] == pytest.approx(base / warm) and lrs[warm - 1] == pytest.approx(base)
    assert lrs[warm + (1000 - warm) // 2] == pytest.approx(0.55 * base, rel=0.01)
    assert lrs[-1] == pytest.approx(0.1 * base, rel=0.01)
    assert opt.param_groups[0]["weight_decay"] == 0.1
    assert workload("hnn").make_optimizer("adam", torch.nn.Linear(2, 2))[1] is None


@pytest.mark.parametrize("task", TASKS)
def test_scores_are_finite_and_the_judge_uses_training_data(task):
    w = workload(task, budget=10)
    model = w.make_model(0)
    h = w.heldout(model)
    assert math.isfinite(h["heldout"]) and math.isfinite(w.train_score(model))
    assert ("accuracy" in h) == task.startswith("mnist1d")
    judge = w.judge(model)
    assert math.isfinite(judge())
    b1, b2 = next(w.sampler(0)), next(w.sampler(0))  # every method of a seed: same batches
    for u, v in zip(torch.utils._pytree.tree_leaves(b1), torch.utils._pytree.tree_leaves(b2),
                    strict=True):
        torch.testing.assert_close(u, v)


def test_hnn_heldout_points_are_not_the_training_grid():
    p = OscillatorProblem()
    points = hnn_heldout_points(p)
    d = (points - p.grid.T).abs().min()
    assert d > 0 and points.shape == (200, 1)
    assert float(points.min()) >= 0 and float(points.max()) <= p.t_max


def test_flops_are_counted_through_second_derivatives():
    w = workload("pinn")
    model = w.make_model(0)
    batch = next(w.sampler(0))
    _, f1 = count_flops(lambda: w.loss(model, batch).backward())
    _, f2 = count_flops(lambda: w.loss(model, batch).backward())
    n = len(batch["interior"])
    assert f1 == f2 > 6 * n * 32 * 32 * 3  # at least forward + backward of the hidden layers


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="unknown race task 'mnist'"):
        workload("mnist")


def test_the_committed_choice_is_what_the_committed_tuning_chose():
    import json
    from pathlib import Path

    from kooptrain.experiments.race.workloads import BEST, TUNED, TUNED_EXTRAPOLATION

    root = Path(__file__).resolve().parents[2] / "results" / "race"
    for task in TASKS:
        t = json.loads((root / task / f"tuning-{task}.json").read_text())
        assert {k: v for k, v in TUNED[task].items() if k in t["choice"]} == t["choice"]
        assert TUNED_EXTRAPOLATION[task] == t["extrapolation"] and BEST[task] == t["best"]
