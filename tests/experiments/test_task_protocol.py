"""The race's task protocol: a task that cannot be raced is refused with one line that names
the piece and the fix; a good one races like a built-in task; the built-in tasks are
written on it."""

import functools
import math
import textwrap

import pytest
import torch
from torch.nn import functional as F

from kooptrain.experiments import PlainOptimizer, Task, TaskError, check_task, load_task
from kooptrain.experiments.race import experiment as race
from kooptrain.experiments.race.builtin import BUILTIN
from kooptrain.experiments.race.methods import Costs, make_run, methods_for
from kooptrain.experiments.race.workloads import workload

X, Y = torch.randn(256, 4, generator=torch.Generator().manual_seed(0)), None
Y = X @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]])


def model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def batches(seed):
    g = torch.Generator().manual_seed(seed)
    while True:
        i = torch.randint(len(X), (32,), generator=g)
        yield X[i], Y[i]


def loss(m, b):
    return F.mse_loss(m(b[0]), b[1])


@torch.no_grad()
def heldout(m):
    return F.mse_loss(m(X[:64]), Y[:64]).item()


def good(**changes) -> dict:
    kw = {"name": "toy", "model": model, "batches": batches, "loss": loss, "heldout": heldout,
          "optimizers": {"adam": PlainOptimizer(torch.optim.Adam, lr=1e-2, grid=(1e-2, 3e-2)),
                         "sgd": PlainOptimizer(functools.partial(torch.optim.SGD, momentum=0.9),
                                               lr=1e-2)},
          "budget": 40, "eval_every": 10}
    return {**kw, **changes}


def refused(match: str, **changes):
    """The task with ``changes`` is refused, at construction or by ``check_task``, with one
    line naming the piece (``match``) and a fix."""
    with pytest.raises(TaskError) as err:
        check_task(Task(**good(**changes)))
    msg = str(err.value)
    assert "\n" not in msg and "fix" in msg and "'toy'" in msg, msg
    assert match in msg, msg
    return msg


@pytest.mark.parametrize("piece", ["model", "batches", "loss", "heldout"])
def test_a_missing_piece_is_named_with_its_fix(piece):
    msg = refused(piece, **{piece: None})
    assert "must be a function" in msg and "def " in msg


@pytest.mark.parametrize("changes, match", [
    ({"budget": 5}, "budget"), ({"budget": 10.5}, "budget"), ({"eval_every": 0}, "eval_every"),
    ({"clip": -1.0}, "clip"), ({"optimizers": {}}, "optimizers"),
    ({"optimizers": {"adam": torch.optim.Adam}}, "optimizers['adam']"),
    ({"optimizers": {"adam": PlainOptimizer(torch.optim.Adam, lr=-1.0)}}, "positive lr"),
    ({"optimizers": {"adam": PlainOptimizer(None)}}, "needs make"),
    ({"reference": "rmsprop"}, "reference"),
    ({"optimizers": {"a": PlainOptimizer(torch.optim.Adam),
                     "b": PlainOptimizer(sequence=("a", "c"))}}, "sequence"),
    ({"judge": 3}, "judge"), ({"name": ""}, "name"),
])
def test_bad_settings_are_refused_when_the_task_is_built(changes, match):
    with pytest.raises(TaskError, match="fix") as err:
        Task(**good(**changes))
    assert match in str(err.value) and "\n" not in str(err.value)


def test_a_loss_that_is_not_a_scalar_with_a_graph_is_refused():
    refused("not a scalar tensor", loss=lambda m, b: (m(b[0]) - b[1]) ** 2)  # per sample
    refused("not a scalar tensor", loss=lambda m, b: loss(m, b).item())
    msg = refused("without a graph", loss=lambda m, b: loss(m, b).detach())
    assert "no_grad" in msg
    refused("loss(model, batch) returned nan", loss=lambda m, b: loss(m, b) * math.nan)


def test_scores_that_are_not_finite_numbers_are_refused():
    refused("heldout(model) returned nan", heldout=lambda m: math.nan)
    refused("heldout(model) returned a tensor of shape (3,)", heldout=lambda m: torch.ones(3))
    refused("heldout(model) returned str", heldout=lambda m: "0.1")
    refused("accuracy(model) returned inf", accuracy=lambda m: math.inf)
    refused("judge(model)()", judge=lambda m: (lambda: math.nan))
    refused("judge(model) returned", judge=lambda m: 0.5)


def test_broken_models_batches_and_optimizers_are_named():
    refused("not an nn.Module", model=lambda seed: "net")
    frozen = model(0).requires_grad_(False)
    refused("without trainable parameters", model=lambda seed: frozen)
    refused("not an iterator", batches=lambda seed: [(X, Y)])
    refused("bn_loader() returned no batches", bn_loader=lambda: [])
    refused("optimizers['adam'].make raised TypeError", optimizers={
        "adam": PlainOptimizer(functools.partial(torch.optim.Adam, nonsense=1))})
    refused("returned str", optimizers={"adam": PlainOptimizer(lambda params, lr: "adam")})


def test_a_scalar_tensor_score_is_accepted_and_a_good_task_passes():
    check_task(Task(**good(heldout=lambda m: F.mse_loss(m(X), Y).detach())))
    t = Task(**good())
    assert t.reference == "adam" and t.eval_every == 10  # the first optimizer by default
    assert Task(**good(eval_every=None)).eval_every == 1  # budget // 50, at least 1
    assert Task(**good(budget=500, eval_every=None)).eval_every == 10


def write(tmp_path, body: str, name: str = "task.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


GOOD_FILE = """
    import torch
    from torch.nn import functional as F
    from kooptrain.experiments import PlainOptimizer, Task

    X = torch.randn(128, 3, generator=torch.Generator().manual_seed(1))
    Y = X.sum(1, keepdim=True)

    def make(seed):
        torch.manual_seed(seed)
        return torch.nn.Linear(3, 1)

    def batches(seed):
        g = torch.Generator().manual_seed(seed)
        while True:
            i = torch.randint(128, (16,), generator=g)
            yield X[i], Y[i]

    def {factory}():
        return Task("tiny", model=make, batches=batches,
                    loss=lambda m, b: F.mse_loss(m(b[0]), b[1]),
                    heldout=lambda m: F.mse_loss(m(X), Y).item(),
                    optimizers={{"adam": PlainOptimizer(torch.optim.Adam, lr=0.05)}},
                    budget=30, eval_every=10)
"""


def test_task_files_load_by_factory_and_every_failure_is_one_line(tmp_path):
    path = write(tmp_path, GOOD_FILE.format(factory="task"))
    assert load_task(path).name == "tiny"
    other = write(tmp_path, GOOD_FILE.format(factory="small"), "other.py")
    assert load_task(f"{other}:small").name == "tiny"
    cases = {
        str(tmp_path / "missing.py"): "is not a Python file",
        other: "defines no function 'task'",
        f"{other}:big": "defines no function 'big'",
        write(tmp_path, "import nonexistent_module_xyz\n", "bad.py"): "ModuleNotFoundError",
        write(tmp_path, "def task():\n    return 3\n", "three.py"): "returned int, not a Task",
    }
    for spec, match in cases.items():
        with pytest.raises(TaskError) as err:
            load_task(spec)
        assert match in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(TaskError, match=r"one of \['make', 'batches', 'small'\]"):
        load_task(other)


def test_a_user_task_races_every_method_and_is_deterministic():
    t = Task(**good(budget=60, eval_every=10, bn_loader=None))
    res = race.run(t, seeds=1, methods=["ema", "swa", "koopman", "schedulefree", "lookahead",
                                        "koopman-average"], progress=False)
    plan = {tuple(p) for p in res["settings"]["plan"]}
    assert {("plain", "adam"), ("plain-copy", "adam"), ("ema", "adam"),
            ("koopman", "adam"), ("koopman", "sgd"), ("schedulefree", "schedulefree"),
            ("plain", "sgd")} <= plan
    assert res["settings"]["task"] == "toy" and res["settings"]["lr_grid"]["adam"] == [1e-2, 3e-2]
    again = race.run(t, seeds=1, methods=["ema", "swa", "koopman", "schedulefree", "lookahead",
                                          "koopman-average"], progress=False)
    for k in res["totals"]:  # the same decisions and counts, run after run
        a, b = res["totals"][k][0], again["totals"][k][0]
        assert {x: a[x] for x in a if x not in ("wall", "cpu")} == \
            {x: b[x] for x in b if x not in ("wall", "cpu")}
    assert res["curves"]["plain:adam"][0][-1][4] < res["curves"]["plain:adam"][0][0][4]


def test_methods_that_do_not_exist_or_do_not_apply_are_named():
    t = Task(**good())
    with pytest.raises(ValueError, match="unknown race method.*'emma'"):
        race.run(t, methods=["emma"], progress=False)
    with pytest.raises(ValueError, match="bn-refresh do not apply"):
        race.run(t, methods=["bn-refresh"], progress=False)


def test_a_user_task_is_checked_before_it_races():
    t = Task(**good(heldout=lambda m: math.nan))
    with pytest.raises(TaskError, match="heldout"):
        race.run(t, progress=False)


def test_closure_optimizers_train_on_the_fixed_batch_and_sequences_switch_at_half():
    lbfgs = functools.partial(torch.optim.LBFGS, max_iter=1, max_eval=10,
                              line_search_fn="strong_wolfe")
    fixed = (X, Y)
    t = Task(**good(budget=20, fixed_batch=fixed, optimizers={
        "adam": PlainOptimizer(torch.optim.Adam, lr=1e-2),
        "lbfgs": PlainOptimizer(lbfgs, lr=1.0, closure=True),
        "adam-lbfgs": PlainOptimizer(sequence=("adam", "lbfgs"))}))
    w = workload(t)
    costs = Costs.measure(w)
    r = make_run(w, "plain", "adam-lbfgs", 0, costs)
    for _ in range(10):
        r.step()
        assert isinstance(r.opt, torch.optim.Adam)
    before = loss(r.model, fixed).item()
    r.step()
    assert isinstance(r.opt, torch.optim.LBFGS) and r.grad_evals > 11  # line search
    for _ in range(9):
        r.step()
    assert loss(r.model, fixed).item() < before
    assert ("adam-koopman-lbfgs", "adam-lbfgs") in set(methods_for(w))


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_the_builtin_tasks_are_tasks_that_pass_the_check(name):
    t = BUILTIN[name](budget=10)
    assert isinstance(t, Task) and t.name == name
    check_task(t)


def test_the_progress_bar_names_the_leader_at_the_last_evaluation():
    from kooptrain.experiments.race.experiment import leader

    curves = {"plain:adam": [[0, 0, 0, 0, 2.0], [0, 0, 0, 10, 0.5]],
              "ema:adam": [[0, 0, 0, 0, 2.0], [0, 0, 0, 10, 0.25]],
              "koopman:adam": [[0, 0, 0, 0, 2.0], [0, 0, 0, 10, None]]}
    assert leader(curves) == "leader ema:adam 0.25"
    assert leader({"a": [[0, 0, 0, 0, None]]}) == "leader: none finite"
