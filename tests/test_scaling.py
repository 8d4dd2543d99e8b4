"""Scaling-law fits on points drawn from known laws: no training needed."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from gptrecipe.io import DataError
from gptrecipe.scaling import (
    bootstrap_interval,
    fit_capability,
    fit_chinchilla,
    fit_power_law,
    fit_runs,
    pass_at_k,
    read_runs,
)

LAWS = [(400.0, -0.12, 1.7), (35.0, -0.05, 0.9), (2.0e4, -0.3, 2.5)]  # (a, b, c) of L(C) = a C^b + c
COMPUTE = np.logspace(15, 17, 6)  # 6 runs over 100x, as a sweep would give


@pytest.mark.parametrize("a,b,c", LAWS)
def test_power_law_recovers_its_parameters_and_extrapolations(a, b, c):
    law = fit_power_law(COMPUTE, a * COMPUTE**b + c)
    assert law.b == pytest.approx(b, rel=1e-3)
    assert law.c == pytest.approx(c, rel=1e-3)
    assert law.a == pytest.approx(a, rel=1e-2)
    for factor in (10, 1000):  # beyond the largest run
        at = COMPUTE[-1] * factor
        assert abs(law(at) / (a * at**b + c) - 1) < 1e-3


def test_power_law_respects_its_constraints_on_a_flat_curve():
    loss = np.array([3.0, 2.999, 2.9985, 2.998, 2.9978, 2.9977])
    law = fit_power_law(COMPUTE, loss)
    assert law.b < 0 and 0 <= law.c < loss.min()


def test_bootstrap_interval_covers_the_truth_under_noise():
    """0.3% loss noise (SCALING.md: the measurement the main job aims at), 6 runs over 100x, predicting 10x
    beyond: the 90% interval covers the true loss in most seeded trials."""
    a, b, c = LAWS[0]
    at = COMPUTE[-1] * 10
    truth = a * at**b + c
    covered, errors = 0, []
    trials = 20
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        loss = (a * COMPUTE**b + c) * (1 + 0.003 * rng.standard_normal(len(COMPUTE)))
        lo, hi = bootstrap_interval(COMPUTE, loss, at, samples=60, seed=seed)
        covered += lo <= truth <= hi
        errors.append(abs(fit_power_law(COMPUTE, loss)(at) / truth - 1))
    print(f"covered {covered}/{trials}, median error {np.median(errors):.4f}")
    assert covered >= 0.6 * trials, covered
    assert np.median(errors) < 0.01  # SCALING.md's simulation: mean 0.36% at 10x


EPOCH = dict(A=477.8, B=2143.9, E=1.817, alpha=0.347, beta=0.367)  # Epoch AI's refit of Chinchilla


def epoch_loss(n, d):
    return EPOCH["E"] + EPOCH["A"] / n ** EPOCH["alpha"] + EPOCH["B"] / d ** EPOCH["beta"]


def test_chinchilla_fit_recovers_the_epoch_surface():
    n = np.repeat(np.logspace(7, 9, 5), 4)
    d = n * np.tile([5.0, 10.0, 20.0, 40.0], 5)  # several tokens-per-parameter ratios: N and D separate
    fit = fit_chinchilla(n, d, epoch_loss(n, d))
    for key in ("E", "alpha", "beta"):
        assert getattr(fit, key) == pytest.approx(EPOCH[key], rel=1e-3), key
    for factor in (10, 1000):  # compute-optimal-ish point beyond the largest run: N and D each sqrt(factor) x
        big_n, big_d = n.max() * math.sqrt(factor), d.max() * math.sqrt(factor)
        assert abs(fit(big_n, big_d) / epoch_loss(big_n, big_d) - 1) < 1e-3


def test_pass_at_k_hand_computed():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 4, 2) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_capability_law_recovers_alpha_and_k():
    C = np.logspace(12, 15, 5)
    law = fit_capability(C, 3.0 * C**-0.08)
    assert law.alpha == pytest.approx(3.0, rel=1e-6) and law.k == pytest.approx(0.08, rel=1e-6)


def write_runs(path, runs):
    path.write_text("".join(json.dumps(r) + "\n" for r in runs))
    return path


def test_fit_runs_and_the_command_line(tmp_path):
    a, b, c = LAWS[0]
    runs = [{"compute": float(x), "loss": a * x**b + c} for x in COMPUTE]
    path = write_runs(tmp_path / "runs.jsonl", runs)
    out = fit_runs(read_runs(path), 1e18, samples=50)
    assert out["prediction"] == pytest.approx(a * 1e18**b + c, rel=1e-3)
    assert out["interval"][0] <= out["prediction"] <= out["interval"][1]
    assert out["interval"] == list(bootstrap_interval([r["compute"] for r in runs], [r["loss"] for r in runs], 1e18,
                                                      samples=50))
    band = out["band"]
    assert band["compute"][0] == min(COMPUTE) and band["compute"][-1] == pytest.approx(1e18)
    for x, lo, hi in zip(band["compute"], band["lo"], band["hi"], strict=True):  # no noise: a narrow band on the law
        assert lo <= hi and a * x**b + c == pytest.approx(lo, rel=1e-2) and a * x**b + c == pytest.approx(hi, rel=1e-2)
    proc = subprocess.run([sys.executable, "-m", "gptrecipe", "scale", "fit", str(path), "--predict", "1e18",
                           "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert {"a", "b", "c", "prediction", "interval"} <= set(got)
    assert got["prediction"] == pytest.approx(a * 1e18**b + c, rel=1e-3)


def test_chinchilla_on_runs_with_tokens_proportional_to_parameters_stays_finite():
    # a sweep's runs (tokens = 0.34 x parameters): N and D cannot be told apart; once this overflowed exp(log B)
    runs = [(80736, 27264, 6.4455), (104760, 35456, 6.2577), (186048, 62976, 5.9554), (281160, 95232, 5.938),
            (390096, 131712, 5.5837)]
    law = fit_chinchilla(*zip(*runs, strict=True))
    assert all(math.isfinite(v) for v in (law.A, law.B, law.E, law.alpha, law.beta))
    for n, d, loss in runs:  # and it still describes them (the fourth run sits 3% above its neighbours' line)
        assert law(n, d) == pytest.approx(loss, rel=0.05)


def test_seeds_of_one_compute_enter_the_fit_as_their_median():
    a, b, c = LAWS[0]
    rng = np.random.default_rng(0)
    runs = []
    for i, x in enumerate(COMPUTE):  # three seeds per compute within 0.1% of the law; at two, one stuck 8% above
        truth = a * x**b + c
        stuck = 0.08 if i in (1, 4) else rng.uniform(-1e-3, 1e-3)
        runs += [{"compute": float(x), "loss": truth * (1 + e)} for e in (*rng.uniform(-1e-3, 1e-3, 2), stuck)]
    medians = [{"compute": float(x), "loss": float(np.median([r["loss"] for r in runs if r["compute"] == x]))}
               for x in COMPUTE]
    out = fit_runs(runs, 1e18, samples=20)
    assert (out["runs"], out["points"]) == (18, 6)
    assert out["prediction"] == pytest.approx(fit_runs(medians, 1e18, samples=20)["prediction"], rel=1e-9)
    truth = a * 1e18**b + c
    assert abs(out["prediction"] / truth - 1) < 0.01  # 10x out, the stuck seeds do not bend the fit


@pytest.mark.parametrize("runs,message", [
    ([{"compute": 1e15, "loss": 3.0}, {"compute": 1e16, "loss": 2.9}], "2 runs cannot determine 3 parameters"),
    ([{"compute": -1.0, "loss": 3.0}], "line 1: 'compute' must be a finite number > 0, got -1.0"),
    ([{"compute": 1e15, "loss": float("nan")}], "line 1: 'loss' must be a finite number > 0, got NaN"),
    ([{"compute": 1e15}], "line 1: no 'loss' field"),
])
def test_bad_runs_get_one_clear_line(tmp_path, runs, message):
    path = write_runs(tmp_path / "runs.jsonl", runs)
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        fit_runs(read_runs(path), 1e18)
    proc = subprocess.run([sys.executable, "-m", "gptrecipe", "scale", "fit", str(path), "--predict", "1e18"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr
