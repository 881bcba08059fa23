"""The race: baselines against their definitions, target arithmetic, the noise band, the
verdict and the profile on known numbers; the lockstep against solo runs; and
`kooptrain race` end to end at a tiny budget."""

import json
import math
import re

import pytest
import torch

from kooptrain.experiments.cli import main
from kooptrain.experiments.race import experiment, summary
from kooptrain.experiments.race.baselines import Lookahead
from kooptrain.experiments.race.figures import RACE_FIGURES
from kooptrain.experiments.race.methods import METHODS, Costs, make_run, methods_for
from kooptrain.experiments.race.workloads import BUDGETS, workload


def test_lookahead_matches_its_definition():
    torch.manual_seed(0)
    A = torch.randn(4, 4)
    A = A @ A.T + torch.eye(4)
    p = torch.nn.Parameter(torch.randn(4))
    q = p.detach().clone()
    opt = Lookahead(torch.optim.SGD([p], lr=0.05), k=3, alpha=0.4)
    slow = q.clone()
    for step in range(1, 10):
        opt.zero_grad()
        (0.5 * p @ A @ p).backward()
        opt.step()
        q = q - 0.05 * (A @ q)           # the fast weights: plain SGD
        if step % 3 == 0:                # every k steps: pull slow towards fast, reset fast
            slow = slow + 0.4 * (q - slow)
            q = slow.clone()
        torch.testing.assert_close(p.detach(), q)
    with pytest.raises(ValueError, match="k="):
        Lookahead(torch.optim.SGD([p], lr=0.1), k=0)
    with pytest.raises(ValueError, match="alpha"):
        Lookahead(torch.optim.SGD([p], lr=0.1), alpha=0)


def point(wall, step, heldout, train=None, flops=None):
    return [wall, wall, step * 10 if flops is None else flops, step, heldout,
            heldout if train is None else train, None]


def test_first_reach_and_targets_use_the_best_value_so_far():
    curve = [point(0, 0, 5.0), point(1, 10, 3.0), point(2, 20, None), point(3, 30, 1.0)]
    assert summary.first_reach(curve, 3.0)[summary.STEP] == 10
    assert summary.first_reach(curve, 0.5) is None
    curves = [[point(0, 0, 4.0), point(1, 25, 3.0), point(2, 50, 2.0), point(3, 75, 2.5),
               point(4, 100, 1.0)],
              [point(0, 0, 4.0), point(1, 25, 2.0), point(2, 50, 2.4), point(3, 100, 1.2)],
              [point(0, 0, 4.0), point(1, 25, 3.5), point(2, 50, 1.0), point(3, 100, 0.9)]]
    # medians over seeds of the best so far: 25% {3, 2, 3.5}, 50% {2, 2, 1}, 100% {1, 1.2, .9}
    assert summary.fix_targets(curves, 100) == {"25%": 3.0, "50%": 2.0, "100%": 1.0}


def seed_result(seed, curves, totals=None):
    tot = {"steps": 100, "grad_evals": 100, "closure_calls": 0, "fits": 0, "jumps_tried": 0,
           "jumps_accepted": 0}
    return {"seed": seed, "curves": curves, "totals": {k: dict(tot) for k in curves}}


def synthetic_race(copy_slowdown=1.02, koop_speed=2.5):
    """Three seeds; plain's loss falls as 1/(1 + s/10) over steps s, 10 ms and 10 FLOPs per
    step; the copy takes the same steps 2% slower; a method of ``speed`` v falls as
    1/(1 + v s/10), so it reaches each loss v times sooner in steps, time and compute."""
    per_seed = []
    for seed in range(3):
        def curve(speed, wall_factor=1.0):
            return [point(0.01 * s * wall_factor, s, 1 / (1 + speed * s / 10))
                    for s in range(0, 101, 5)]
        per_seed.append(seed_result(seed, {
            "plain:adam": curve(1), "plain-copy:adam": curve(1, copy_slowdown),
            "plain:sgd": curve(0.5), "koopman:adam": curve(koop_speed),
            "koopman:sgd": curve(0.5), "rna:adam": curve(1.5)}))
    rows, targets = summary.rows_for(per_seed, "adam", 100)
    return {"settings": {"best_plain": "adam", "task": "t"}, "results": rows,
            "summary": summary.summarize(rows), "tuning": {"targets": targets},
            "provenance": {"date": "d", "git_commit": "c"}}


def test_rows_carry_heldout_and_training_targets_and_every_measure():
    res = synthetic_race()
    need = {"target", "train_target", "wall_to_target", "cpu_to_target", "flops_to_target",
            "steps_to_target", "steps_to_train_target", "final_heldout", "final_train",
            "total_closure_calls", "total_grad_evals"}
    assert all(need <= set(r) for r in res["results"])
    half = summary.lookup(res, "plain", "adam")
    assert half["median_steps"] == 50 and half["target"] == pytest.approx(1 / 6)


def test_noise_band_is_the_copy_against_the_original_and_steps_must_agree():
    res = synthetic_race(copy_slowdown=1.02)
    band = summary.noise_band(res)
    assert band["identical"]
    assert band["wall"]["factor"] == pytest.approx(1.02)
    assert summary.compare(1.01, band["wall"]["factor"]) == "within noise"
    assert summary.compare(0.9, band["wall"]["factor"]) == "faster"
    assert summary.compare(1.1, band["wall"]["factor"]) == "slower"


def test_verdict_in_wall_time_and_compute():
    v = summary.verdict(synthetic_race(koop_speed=2.5))
    for m in ("wall", "flops"):
        d = v["measures"][m]
        assert d["speedup"] == pytest.approx(2.5, rel=0.05) and d["clause1"]
        assert d["never_slower"] == {"adam": True, "sgd": True} and d["clause2"]
        assert d["best_other"][1] == "rna" and d["clause3"]
    v = summary.verdict(synthetic_race(koop_speed=1.2))
    assert not v["measures"]["wall"]["clause1"] and not v["measures"]["wall"]["clause3"]


@pytest.mark.parametrize("misses, reached, median", [((0,), 2, 1), ((1, 2), 1, math.inf)])
def test_unreached_targets_count_as_infinitely_slow(misses, reached, median):
    """Koopman misses the 100% target on the seeds ``misses``: the median is finite only
    while most seeds reach it."""
    per_seed = [seed_result(s, {"plain:adam": [point(0, 0, 1.0), point(1, 100, 0.1)],
                                "koopman:adam": [point(0, 0, 1.0),
                                                 point(1, 100, 0.5 if s in misses else 0.1)]})
                for s in range(3)]
    rows, _ = summary.rows_for(per_seed, "adam", 100)
    d = next(d for d in summary.summarize(rows) if d["method"] == "koopman"
             and d["target_name"] == "100%")
    assert d["reached"] == reached and d["median_wall"] == median


def test_profile_counts_tasks_within_a_factor_of_the_best():
    a, b = synthetic_race(koop_speed=2.5), synthetic_race(koop_speed=0.8)
    b["settings"]["task"] = "u"
    prof = summary.profile([a, b], "wall", taus=(1, 1.3, 2))
    # task t: koopman fastest; task u: rna (1.5) fastest, koopman 0.8 is 1.875x slower
    assert prof["fractions"]["koopman"] == [0.5, 0.5, 1.0]
    assert prof["fractions"]["rna"] == [0.5, 0.5, 1.0]
    assert prof["fractions"]["plain (reference)"] == [0.0, 0.0, 0.5]
    assert "plain-copy" not in prof["fractions"]


@pytest.mark.parametrize("method", sorted({m for m, _ in methods_for(workload("hnn"))}))
def test_every_method_trains_counts_and_scores(method):
    w = workload("hnn", budget=60)
    costs = Costs.measure(w)
    opt = "schedulefree" if method.startswith("schedulefree") else "adam"
    r = make_run(w, method, opt, 0, costs, {"every": 1, "window": 5, "horizons": (2, 4, 8)},
                 {"window": 5, "lam": 1e-5}, {"every": 5, "window": 5})
    before = r.score()["heldout"]
    for _ in range(60):
        r.step()
    assert r.score()["heldout"] < before  # it trained (rna-offline: extrapolates here)
    t = r.totals()
    assert t["steps"] == t["grad_evals"] == 60 and t["wall"] > 0 and t["cpu"] > 0
    extra = t["flops"] - 60 * costs.step
    if method in ("koopman", "linear-extrapolation", "lawa", "rna", "anderson"):
        assert r.acc.jumps_tried >= 1 and t["closure_calls"] >= 2 * t["fits"] > 0
        assert extra >= t["closure_calls"] * costs.closure
    elif method == "rna-offline":
        assert t["fits"] >= 1 and t["closure_calls"] == 0
    elif "koopman-average" in method:  # a fit at each snapshot from the 5th (step 21)
        assert t["fits"] == 8 and t["closure_calls"] == 0 and r.avg.estimating
        assert extra == t["fits"] * costs.fit_flops("koopman", 5, 0) > 0
    else:
        assert t["closure_calls"] == 0 and extra == 0


def test_lbfgs_counts_every_function_evaluation_of_its_line_search():
    w = workload("pinn", budget=20)
    costs = Costs.measure(w)
    r = make_run(w, "plain", "adam-lbfgs", 0, costs)
    for _ in range(20):
        r.step()
    t = r.totals()
    assert t["steps"] == 20 and t["grad_evals"] > 20  # Adam's 10, then >= 1 per L-BFGS step
    assert isinstance(r.opt, torch.optim.LBFGS)
    assert t["flops"] == t["grad_evals"] * costs.step


def test_lbfgs_makes_progress_one_iteration_per_step():
    """torch's LBFGS(max_iter=1) with its default max_eval gives the line search no
    evaluation and never moves; the race's must lower the loss every few steps."""
    w = workload("pinn", budget=80)
    r = make_run(w, "plain", "adam-lbfgs", 0, Costs.measure(w))
    fixed = w.fixed_batch
    for _ in range(40):  # Adam's half
        r.step()
    r.step()  # L-BFGS's first iteration
    before = float(w.loss(r.model, fixed).detach())
    for _ in range(39):
        r.step()
    after = float(w.loss(r.model, fixed).detach())
    assert after < 0.9 * before


def test_lockstep_changes_nothing_but_the_clock():
    """A run advanced beside others makes exactly the steps it makes alone, and the two
    copies of the reference are identical but for their times."""
    w = workload("hnn", budget=60)
    w.eval_every = 20
    costs = Costs.measure(w)
    acc = {"every": 1, "window": 5, "horizons": (2, 4, 8)}
    both = experiment.race_seed(w, 0, [("plain", "adam"), ("plain-copy", "adam"),
                                       ("koopman", "adam")], costs, acc)
    alone = experiment.race_seed(w, 0, [("koopman", "adam")], costs, acc)

    def numbers(curve):
        return [p[2:] for p in curve]  # flops, step and scores; no times

    assert numbers(both["curves"]["koopman:adam"]) == numbers(alone["curves"]["koopman:adam"])
    assert numbers(both["curves"]["plain:adam"]) == numbers(both["curves"]["plain-copy:adam"])
    assert both["totals"]["koopman:adam"]["jumps_tried"] >= 1


def test_race_cli_end_to_end_and_resume_per_seed(tmp_path, capsys, monkeypatch):
    out = tmp_path / "race"
    argv = ["race", "hnn", "--seeds", "2", "--steps", "40", "--out", str(out), "--no-progress"]
    real, calls = experiment.race_seed, []

    def interrupted(w, seed, *a, **k):
        calls.append(seed)
        if seed == 1:
            raise KeyboardInterrupt
        return real(w, seed, *a, **k)

    monkeypatch.setattr(experiment, "race_seed", interrupted)
    assert main(argv) == 130
    assert "1 finished run(s) are saved" in capsys.readouterr().err
    calls.clear()
    monkeypatch.setattr(experiment, "race_seed", lambda w, seed, *a, **k: calls.append(seed)
                        or real(w, seed, *a, **k))
    assert main(argv + ["--resume"]) == 0
    assert calls == [1]  # seed 0 was not raced again
    res = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["seed"]) for r in res["results"]} == {
        (m, s) for m in ("plain", "plain-copy", "koopman", "rna", "schedulefree")
        for s in (0, 1)}
    assert res["provenance"]["resumed_runs"] == 1
    report = (out / "report.md").read_text()
    for words in ("Goal, in words", "## Verdict", "## Noise band", "Not the full race"):
        assert words in report
    for fig in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / fig).stat().st_size > 5000
    assert set(RACE_FIGURES) <= set(re.findall(r"\(([^)]+\.png)\)", report))


def test_race_help_gives_the_default_budgets(capsys):
    with pytest.raises(SystemExit):
        main(["race", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for task, steps in BUDGETS.items():
        assert f"{task} {steps}" in text


def test_profile_cli_writes_the_profile_and_refuses_a_task_twice(tmp_path, capsys):
    paths = []
    for task, speed in (("t", 2.5), ("u", 0.8)):
        res = synthetic_race(koop_speed=speed)
        res["settings"]["task"] = task
        res |= {"kind": "race", "schema_version": 1}
        paths.append(tmp_path / f"{task}.json")
        paths[-1].write_text(json.dumps(res))
    out = tmp_path / "profile"
    assert main(["profile", *map(str, paths), "--out", str(out)]) == 0
    text = (out / "profile.md").read_text()
    assert "| koopman | 0.50 |" in text and "Tasks: t, u." in text
    assert (out / "race_profile.png").stat().st_size > 5000
    assert main(["profile", str(paths[0]), str(paths[0]), "--out", str(out)]) == 2
    assert "give each task once" in capsys.readouterr().err


def test_a_rerun_reproduces_counts_exactly_and_ratios_within_the_band():
    a = synthetic_race(copy_slowdown=1.02)
    b = json.loads(json.dumps(a))
    for r in b["results"]:  # the whole machine 30% slower: ratios unchanged
        for k in ("wall_to_target", "cpu_to_target"):
            if r[k] is not None:
                r[k] *= 1.3
    b["summary"] = summary.summarize(b["results"])
    rep = summary.reproduction(a, b)
    assert rep["identical_steps"] and rep["identical_flops"] and rep["within_band"]
    assert rep["worst_ratio_change"] == pytest.approx(1.0)
    for r in b["results"]:  # Koopman alone 10% slower: beyond the 2% band
        if r["method"] == "koopman" and r["wall_to_target"] is not None:
            r["wall_to_target"] *= 1.1
    b["summary"] = summary.summarize(b["results"])
    rep = summary.reproduction(a, b)
    # each run's ratio is uncertain by its own 2% band: together 1.02**2
    assert rep["band"] == pytest.approx(1.02 ** 2)
    assert not rep["within_band"] and rep["worst_ratio_change"] == pytest.approx(1.1)
    assert rep["median_ratio_change"] == pytest.approx(1.0)  # one method of several moved
    assert not rep["verdict_within_band"] and rep["verdict_ratio_change"] == pytest.approx(1.1)
    # thread-CPU seconds were left alone: their ratios reproduce
    assert rep["cpu_within_band"] and rep["cpu_worst_ratio_change"] == pytest.approx(1.0)
    for r in b["results"]:  # 3% slower: beyond one run's band, within the two together
        if r["method"] == "koopman" and r["wall_to_target"] is not None:
            r["wall_to_target"] *= 1.03 / 1.1
    b["summary"] = summary.summarize(b["results"])
    rep = summary.reproduction(a, b)
    assert rep["within_band"] and rep["verdict_ratio_change"] == pytest.approx(1.03)
    b["results"][0]["steps_to_target"] = -1
    assert not summary.reproduction(a, b)["identical_steps"]
    # which vector kernels each run's torch used, where both recorded it
    assert summary.reproduction(a, b)["same_cpu_capability"] is None
    a["provenance"]["cpu_capability"], b["provenance"]["cpu_capability"] = "AVX2", "AVX512"
    assert summary.reproduction(a, b)["same_cpu_capability"] is False
    b["provenance"]["cpu_capability"] = "AVX2"
    assert summary.reproduction(a, b)["same_cpu_capability"] is True
    # the same kernels on two CPU models is not the same float32 arithmetic
    a["provenance"] |= {"cpu": "AMD EPYC", "torch": "2.13.0+cpu"}
    b["provenance"] |= {"cpu": "Intel(R) Xeon(R) Processor", "torch": "2.13.0+cpu"}
    rep = summary.reproduction(a, b)
    assert rep["same_cpu_capability"] is True and rep["same_arithmetic"] is False
    b["provenance"]["cpu"] = "AMD EPYC"  # one name, nothing recorded that differs
    assert summary.reproduction(a, b)["same_arithmetic"] is None
    a["provenance"]["cpu_signature"] = "AuthenticAMD 25/1/1, 512 KB, flags 0badf00d"
    b["provenance"]["cpu_signature"] = "AuthenticAMD 23/49/0, 512 KB, flags 0badf00d"
    assert summary.reproduction(a, b)["same_arithmetic"] is False
    b["provenance"]["cpu_signature"] = a["provenance"]["cpu_signature"]
    assert summary.reproduction(a, b)["same_arithmetic"] is True
    b["provenance"]["torch"] = "2.12.0+cpu"
    assert summary.reproduction(a, b)["same_arithmetic"] is False


def test_the_provenance_names_the_cpu_kernels_torch_chose():
    import torch

    from kooptrain.experiments.harness.provenance import provenance

    assert provenance()["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_the_provenance_signs_the_cpu_from_cpuinfo():
    from pathlib import Path

    from kooptrain.experiments.harness.provenance import provenance

    info = Path("/proc/cpuinfo")
    if not info.exists():
        pytest.skip("no /proc/cpuinfo here")
    first = {}
    for line in info.read_text().splitlines():
        k, _, v = line.partition(":")
        first.setdefault(k.strip(), v.strip())
    sig = provenance()["cpu_signature"]
    assert sig.startswith(f"{first['vendor_id']} {first['cpu family']}/{first['model']}/")
    assert first["cache size"] in sig and len(sig.rsplit("flags ", 1)[1]) == 8


def test_bn_refresh_is_plain_training_with_statistics_refreshed_at_every_score():
    """The refresh as a method of its own: the same weights as plain training, its
    statistics recomputed before every score, and every refresh batch counted."""
    w = workload("mnist1d-cnn", budget=50)
    w.eval_every = 25
    costs = Costs.measure(w)
    assert ("bn-refresh", w.best) in methods_for(w)
    assert "bn-refresh" not in {m for m, _ in methods_for(workload("hnn"))}  # no BatchNorm
    plain, refresh = (make_run(w, m, "sgd", 0, costs) for m in ("plain", "bn-refresh"))
    for _ in range(50):
        plain.step()
        refresh.step()
    for a, b in zip(plain.model.parameters(), refresh.model.parameters(), strict=True):
        assert torch.equal(a, b)  # training is untouched
    t = refresh.totals()
    assert t["bn_batches"] == 2 * w.bn_batches and t["closure_calls"] == 0
    assert t["flops"] == 50 * costs.step + t["bn_batches"] * costs.bn_batch
    from torch.optim.swa_utils import update_bn

    update_bn(w.bn_loader(), plain.model)  # what the refresh at step 50 computed
    for a, b in zip(plain.model.buffers(), refresh.model.buffers(), strict=True):
        assert torch.equal(a, b)


def test_a_report_names_the_package_version_also_from_an_installed_wheel():
    from kooptrain import __version__
    from kooptrain.experiments.harness.provenance import describe_code, provenance

    p = provenance()
    assert p["kooptrain"] == __version__
    assert describe_code({**p, "git_commit": None}) == \
        f"kooptrain {__version__} (installed, not a git checkout)"
    assert describe_code({**p, "git_commit": "abc1234", "git_dirty": True}) == \
        f"kooptrain {__version__}, commit abc1234 (with uncommitted changes)"
    assert describe_code({"git_commit": "abc1234"}).startswith("kooptrain version not recorded")


def test_uncommitted_changes_anywhere_in_the_package_mark_a_report_dirty(tmp_path,
                                                                         monkeypatch):
    import subprocess
    from pathlib import Path

    import kooptrain
    from kooptrain.experiments.harness import provenance as prov

    # it asks git about the whole package (an engine change counts), not one subpackage
    assert prov.PACKAGE_ROOT == Path(kooptrain.__file__).resolve().parent
    repo = tmp_path / "repo"
    (repo / "engine").mkdir(parents=True)
    (repo / "engine" / "fit.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    monkeypatch.setattr(prov, "PACKAGE_ROOT", repo)
    assert (prov.provenance()["git_commit"], prov.provenance()["git_dirty"]) == (head, False)
    (repo / "engine" / "fit.py").write_text("x = 2\n")
    assert prov.provenance()["git_dirty"] is True


def test_every_method_of_the_race_is_one_class_and_an_unknown_one_is_named():
    for task in ("hnn", "mnist1d-cnn"):
        for method, _ in methods_for(workload(task)):
            assert method in METHODS[method].names
    with pytest.raises(ValueError, match=r"unknown race method 'sgd'.*choose from"):
        make_run(workload("hnn", budget=10), "sgd", "adam", 0, None)


def test_the_pinn_hand_off_keeps_the_best_judged_point_and_otherwise_is_adam_lbfgs():
    """At the switch the hand-off judges Adam's weights and every candidate, keeps the
    lowest, and counts each judge call; a hand-off that keeps Adam's weights is adam-lbfgs
    bit for bit (early in training every jump is usually worse; which point wins is
    decided by rounding, which differs between CPUs and thread counts)."""
    w = workload("pinn", budget=240)
    costs = Costs.measure(w)
    plain, hand = (make_run(w, m, "adam-lbfgs", 0, costs)
                   for m in ("plain", "adam-koopman-lbfgs"))
    for i in range(240):
        plain.step()
        hand.step()
        if i == 119:  # the last Adam step: the two runs are identical up to here
            adam_at_switch = torch.cat([p.detach().reshape(-1).double()
                                        for p in plain.model.parameters()])
    h = hand.handoff
    assert h["step"] == 120 and set(h["scores"]) >= {"now", "fixed point", "h=50"}
    assert h["kept"] == min(h["scores"], key=h["scores"].get)
    t = hand.totals()
    assert t["closure_calls"] == len(h["scores"]) and t["fits"] == 1
    # its judge calls and its fit are counted on top of its training steps (whose number
    # L-BFGS's line search decides from where the hand-off left it)
    assert t["flops"] > t["grad_evals"] * costs.step + t["closure_calls"] * costs.closure
    X = hand.rec.snapshots()[0][0]  # the window ends at the weights Adam handed over
    torch.testing.assert_close(X[:, -1].double(), adam_at_switch, rtol=0, atol=0)
    assert hand.rec.n_snapshots == 5  # steps 20, 45, 70, 95, 120
    if h["kept"] == "now":  # then it is adam-lbfgs, plus the hand-off's compute
        for a, b in zip(plain.model.parameters(), hand.model.parameters(), strict=True):
            assert torch.equal(a, b)
        assert t["grad_evals"] == plain.totals()["grad_evals"]
        assert t["flops"] > plain.totals()["flops"]
    assert ("adam-koopman-lbfgs", "adam-lbfgs") in methods_for(w)


def test_the_average_methods_keep_the_copy_their_name_and_settings_say():
    w = workload("hnn", budget=10)
    costs = Costs.measure(w)
    assert make_run(w, "koopman-average", "adam", 0, costs).avg.source == "ema"
    assert make_run(w, "koopman-average-weights", "adam", 0, costs).avg.source == "weights"
    design = make_run(w, "koopman-average", "adam", 0, costs, average={"every": 3, "lam": 0.0})
    assert (design.avg.every, design.avg.lam, design.avg.source) == (3, 0.0, "ema")


def test_the_schedule_free_koopman_average_fits_x_and_leaves_training_as_it_was():
    w = workload("hnn", budget=30)
    costs = Costs.measure(w)
    sf = make_run(w, "schedulefree", "schedulefree", 0, costs)
    ka = make_run(w, "schedulefree-koopman-average", "schedulefree", 0, costs,
                  average={"every": 5, "window": 5})
    assert ka.avg.source == "weights"
    for step in range(1, 31):
        sf.step()
        ka.step()
        for a, b in zip(sf.model.parameters(), ka.model.parameters(), strict=True):
            assert torch.equal(a, b)  # the same y, z and x: training is untouched
        if (step - 1) % 5 == 0:  # a snapshot step: the copy's window ends at x
            beta1 = sf.opt.param_groups[0]["betas"][0]  # x from y and z, as eval() has it
            x = torch.cat([p.detach().lerp(sf.opt.state[p]["z"], 1 - 1 / beta1).reshape(-1)
                           for p in sf.model.parameters()])
            last = min(ka.avg.n_snapshots, 5) - 1
            assert torch.equal(ka.avg.window_[last], x)
    t = ka.totals()
    assert ka.avg.estimating and t["fits"] == 2 and t["closure_calls"] == 0  # at 21, 26
    assert t["flops"] - sf.totals()["flops"] == t["fits"] * costs.fit_flops("koopman", 5, 0)
    assert ka.score()["heldout"] is not None


def test_koopman_jumps_ride_lbfgs_iterates_and_the_hand_off_records_only_adams():
    w = workload("pinn", budget=40)
    costs = Costs.measure(w)
    r = make_run(w, "koopman", "lbfgs", 0, costs, {"every": 2, "window": 4,
                                                  "horizons": (4, 8)})
    for _ in range(40):
        r.step()
    t = r.totals()
    assert isinstance(r.opt, torch.optim.LBFGS) and r.acc.step_count == 40
    assert r.acc.jumps_tried >= 1 and t["closure_calls"] >= 2 * t["fits"] > 0
    assert t["grad_evals"] > 40  # L-BFGS's line search, counted as before
    w = workload("pinn", budget=120)  # the switch at 60: snapshots at steps 10, 35, 60
    hand = make_run(w, "adam-koopman-lbfgs", "adam-lbfgs", 0, Costs.measure(w))
    for _ in range(90):  # step 85 would be a snapshot step if L-BFGS's half recorded
        hand.step()
    assert hand.handoff is not None and hand.rec.step_count == 3  # none in L-BFGS's half


@pytest.mark.slow
def test_the_full_pinn_race_reports_the_hand_off_beside_the_accelerators_attempts(tmp_path):
    """The hand-off's history is one record per switch, not the accelerator's attempts; the
    report once died on it after the whole race had run."""
    out = tmp_path / "race"
    assert main(["race", "pinn", "--full", "--seeds", "1", "--steps", "120",
                 "--no-progress", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    res = json.loads((out / "results.json").read_text())
    hand = res["histories"]["adam-koopman-lbfgs:adam-lbfgs"]
    assert len(hand) == 1 and hand[0]["step"] == 60
    assert f"at step 60 kept **{hand[0]['kept']}**" in report
    assert "| koopman | lbfgs |" in report  # Koopman on L-BFGS's own iterates is in the field


def test_a_target_reached_at_the_start_costs_zero_and_compares_without_dividing_by_it():
    """A short race on an easy task: a method can hold the target at its first score (cost
    0); the verdict once divided by that zero."""
    from kooptrain.experiments.race.summary import cost_ratio

    assert cost_ratio(2.0, 4.0) == 0.5 and cost_ratio(0.0, 0.0) == 1.0
    assert cost_ratio(3.0, 0.0) == math.inf
    assert summary.compare(cost_ratio(3.0, 0.0), 1.02) == "slower"
