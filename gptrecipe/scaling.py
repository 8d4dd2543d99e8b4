"""Predictable scaling (GPT-4 technical report, section 3; RECIPE.md section 8): fit the final losses of small runs
of one recipe and predict the loss of a bigger run before it trains.

- `fit_power_law`: L(C) = a * C^b + c with b < 0 and 0 <= c < min L (c: the irreducible loss), by a Huber loss
  on the residuals of log L, from a grid of starts; `bootstrap_interval` resamples the runs and refits.
- `fit_chinchilla`: L(N, D) = E + A / N^alpha + B / D^beta (Chinchilla's approach 3, as Epoch AI refit it: the
  log-sum-exp form of log L, Huber delta 1e-3, L-BFGS from a grid of starts).
- `pass_at_k` (the unbiased estimator of Chen et al.) and `fit_capability`: -mean log(pass rate) = alpha * C^-k,
  GPT-4's capability law.

Compute is normalised by the runs' geometric mean inside the fits (C^b of a raw 1e18 would overflow the
optimiser's steps); the parameters reported are in the caller's units.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logsumexp

from .io import DataError, read_jsonl

HUBER_DELTA = 1e-3  # on log-loss residuals (Epoch AI): errors beyond 0.1% count linearly, so an outlier run pulls less
# the objective is tiny near the optimum (residuals of 1e-4 square to 1e-8): scipy's default stopping rules quit early
TIGHT = {"ftol": 1e-15, "gtol": 1e-13, "maxiter": 5000}


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals and its derivative."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)), np.clip(r, -delta, delta)


# ---- L(C) = a C^b + c -----------------------------------------------------------------------------------------


@dataclass
class PowerLaw:
    """L(C) = a * C^b + c."""

    a: float
    b: float
    c: float

    def __call__(self, compute: float | np.ndarray) -> float | np.ndarray:
        return self.a * np.power(compute, self.b) + self.c


def _power_law_objective(theta: np.ndarray, x: np.ndarray, y: np.ndarray, floor: float):
    """Huber loss of log residuals for theta = (log a', beta, gamma): b = -softplus(beta) < 0 and
    c = floor * sigmoid(gamma) in (0, floor); x = log(C / C0), y = log L."""
    log_a, beta, gamma = theta
    b, s = -np.logaddexp(0.0, beta), expit(gamma)
    c = floor * s
    with np.errstate(over="ignore", invalid="ignore"):  # a line search may try a wild step: report it as huge
        term = np.exp(log_a + b * x)
        pred = np.maximum(term + c, 1e-300)
        r = np.log(pred) - y
        loss, d = huber(r)
        g = d / pred  # d loss / d pred
        grad = np.array([np.sum(g * term), np.sum(g * term * x) * -expit(beta), np.sum(g) * floor * s * (1 - s)])
    total = float(np.sum(loss))
    if not (math.isfinite(total) and np.isfinite(grad).all()):
        return 1e300, np.zeros(3)
    return total, grad


GRID = list(itertools.product((0.05, 0.1, 0.2, 0.4, 0.8), (0.05, 0.3, 0.6, 0.9)))  # (-b, c / min L) starts


def fit_power_law(compute: Sequence[float], loss: Sequence[float], *,
                  starts: Sequence[tuple[float, float]] = GRID, options: dict = TIGHT) -> PowerLaw:
    """The best of L-BFGS runs from a grid of starts (-b, and the share of the smallest loss that is irreducible)."""
    C, L = _check_points(compute, loss, 3)
    c0 = math.exp(float(np.mean(np.log(C))))
    x, y, floor = np.log(C / c0), np.log(L), float(L.min())
    best = None
    for b0, share in starts:
        share = min(max(share, 1e-6), 1 - 1e-6)
        a_start = max(float(np.exp(np.mean(y))) - share * floor, 1e-12)
        theta0 = np.array([math.log(a_start), math.log(math.expm1(max(b0, 1e-6))), math.log(share / (1 - share))])
        res = minimize(_power_law_objective, theta0, args=(x, y, floor), jac=True, method="L-BFGS-B", options=options)
        if best is None or res.fun < best.fun:
            best = res
    log_a, beta, gamma = best.x
    b = -float(np.logaddexp(0.0, beta))
    return PowerLaw(a=float(math.exp(log_a) * c0 ** (-b)), b=b, c=float(floor * expit(gamma)))


def bootstrap_interval(compute: Sequence[float], loss: Sequence[float], at: float, *, samples: int = 200,
                       level: float = 0.9, seed: int = 0) -> tuple[float, float]:
    """A percentile interval of the prediction at `at`: refit on runs drawn with replacement (resamples with
    fewer than 3 distinct runs are redrawn); each refit starts from the full fit and two grid points."""
    lo, hi = bootstrap_band(compute, loss, [at], samples=samples, level=level, seed=seed)
    return lo[0], hi[0]


def bootstrap_band(compute: Sequence[float], loss: Sequence[float], at: Sequence[float], *, samples: int = 200,
                   level: float = 0.9, seed: int = 0) -> tuple[list[float], list[float]]:
    """`bootstrap_interval` at every compute in `at` from the same refits (the band of a plot)."""
    C, L = _check_points(compute, loss, 3)
    full = fit_power_law(C, L)
    starts = [(-full.b, full.c / L.min()), (0.1, 0.3), (0.4, 0.9)]
    rng = np.random.default_rng(seed)
    at = np.asarray(at, dtype=float)
    preds: list[np.ndarray] = []
    while len(preds) < samples:
        idx = rng.integers(0, len(C), len(C))
        if len(set(C[idx].tolist())) < 3:
            continue
        preds.append(np.asarray(fit_power_law(C[idx], L[idx], starts=starts, options={"maxiter": 500})(at)))
    lo, hi = np.quantile(np.stack(preds), [(1 - level) / 2, (1 + level) / 2], axis=0)
    return [float(x) for x in lo], [float(x) for x in hi]


# ---- L(N, D) = E + A / N^alpha + B / D^beta ----------------------------------------------------------------------


@dataclass
class Chinchilla:
    """L(N, D) = E + A / N^alpha + B / D^beta (parameters N, training tokens D)."""

    A: float
    B: float
    E: float
    alpha: float
    beta: float

    def __call__(self, params: float | np.ndarray, tokens: float | np.ndarray) -> float | np.ndarray:
        return self.E + self.A / np.power(params, self.alpha) + self.B / np.power(tokens, self.beta)


def _chinchilla_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, y: np.ndarray):
    a, b, e, alpha, beta = theta
    z = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    pred = logsumexp(z, axis=0)
    w = np.exp(z - pred)  # softmax weights: d pred / d z
    loss, d = huber(pred - y)
    grad = np.array([np.sum(d * w[0]), np.sum(d * w[1]), np.sum(d * w[2]),
                     np.sum(d * w[0] * -log_n), np.sum(d * w[1] * -log_d)])
    return float(np.sum(loss)), grad


# log A, log B, log E, alpha, beta: wide enough for any real law, finite when exponentiated. Runs whose tokens are a
# fixed multiple of their parameters (a sweep) cannot tell A / N^alpha from B / D^beta, and unbounded, the two
# terms can run off together to log B ~ 1e3 (exp overflows).
CHINCHILLA_BOUNDS = [(-100.0, 300.0), (-100.0, 300.0), (-100.0, 100.0), (0.0, 10.0), (0.0, 10.0)]


def fit_chinchilla(params: Sequence[float], tokens: Sequence[float], loss: Sequence[float], *,
                   keep: int = 64) -> Chinchilla:
    """Epoch AI's fit: log L = LSE(a - alpha log N, b - beta log D, e) by Huber loss, L-BFGS from their grid of
    starts (alpha, beta in {0, .5, 1, 1.5, 2}, e in {-1, -.5, 0, .5, 1}, a, b in {0, 5, ..., 25}); the grid's
    `keep` best starts by their initial loss are optimised (all 4,500 change nothing on the tests, ~50x slower)."""
    N, L = _check_points(params, loss, 5)
    D, _ = _check_points(tokens, loss, 5)
    log_n, log_d, y = np.log(N), np.log(D), np.log(L)
    grid = np.array(list(itertools.product(range(0, 30, 5), range(0, 30, 5), (-1, -0.5, 0, 0.5, 1),
                                           (0, 0.5, 1, 1.5, 2), (0, 0.5, 1, 1.5, 2))), dtype=float)
    z = np.stack([grid[:, :1] - grid[:, 3:4] * log_n, grid[:, 1:2] - grid[:, 4:5] * log_d,
                  np.repeat(grid[:, 2:3], len(y), axis=1)])
    start_loss = huber(logsumexp(z, axis=0) - y)[0].sum(axis=1)
    best = None
    for theta0 in grid[np.argsort(start_loss)[:keep]]:
        res = minimize(_chinchilla_objective, theta0, args=(log_n, log_d, y), jac=True, method="L-BFGS-B",
                       options=TIGHT, bounds=CHINCHILLA_BOUNDS)
        if best is None or res.fun < best.fun:
            best = res
    a, b, e, alpha, beta = best.x
    return Chinchilla(A=math.exp(a), B=math.exp(b), E=math.exp(e), alpha=float(alpha), beta=float(beta))


# ---- capabilities ------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n - c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclass
class CapabilityLaw:
    """-mean log(pass rate) = alpha * C^(-k) (GPT-4's HumanEval law)."""

    alpha: float
    k: float

    def __call__(self, compute: float | np.ndarray) -> float | np.ndarray:
        return self.alpha * np.power(compute, -self.k)


def fit_capability(compute: Sequence[float], neg_mean_log_pass: Sequence[float]) -> CapabilityLaw:
    """Least squares on log(-mean log pass) = log alpha - k log C."""
    C, y = _check_points(compute, neg_mean_log_pass, 2)
    slope, intercept = np.polyfit(np.log(C), np.log(y), 1)
    return CapabilityLaw(alpha=float(math.exp(intercept)), k=float(-slope))


# ---- runs files ----------------------------------------------------------------------------------------------------


def _check_points(x: Sequence[float], y: Sequence[float], need: int) -> tuple[np.ndarray, np.ndarray]:
    X, Y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if X.shape != Y.shape or X.ndim != 1:
        raise ValueError("the fit needs two sequences of the same length")
    if len(X) < need:
        raise DataError(f"{len(X)} runs cannot determine {need} parameters: give at least {need}")
    if not (np.isfinite(X).all() and (X > 0).all()):
        raise DataError("compute (and params, tokens) must be finite and positive")
    if not (np.isfinite(Y).all() and (Y > 0).all()):
        raise DataError("losses must be finite and positive (a NaN or a non-positive loss cannot be fitted)")
    return X, Y


def read_runs(path: str | Path) -> list[dict]:
    """A runs JSONL file: one run per line with at least `compute` and `loss` (numbers > 0); clear errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such runs file")
    runs = []
    for n, obj in read_jsonl(path):
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {n}: expected an object with 'compute' and 'loss'")
        for key in ("compute", "loss", "params", "tokens"):
            if key not in obj:
                if key in ("compute", "loss"):
                    raise DataError(f"{path}: line {n}: no {key!r} field")
                continue
            v = obj[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise DataError(f"{path}: line {n}: {key!r} must be a finite number > 0, got {json.dumps(v)}")
        runs.append(obj)
    return runs


def median_by_compute(runs: list[dict]) -> tuple[list[float], list[float]]:
    """One point per compute: the median loss of the runs that share it (seeds of one configuration: a short run
    that stays on the early plateau longer than its twins counts as one vote, not as a bend of the curve)."""
    by: dict[float, list[float]] = {}
    for r in runs:
        by.setdefault(float(r["compute"]), []).append(float(r["loss"]))
    C = sorted(by)
    return C, [float(np.median(by[c])) for c in C]


def fit_runs(runs: list[dict], predict: float, *, level: float = 0.9, samples: int = 200) -> dict:
    """Everything `gptrecipe scale fit` reports: L(C) over one point per compute (`median_by_compute`), its
    prediction at `predict` with a bootstrap interval (over those points), and L(N, D) over every run when every
    run has `params` and `tokens` (and there are at least 5)."""
    C, L = median_by_compute(runs)
    law = fit_power_law(C, L)
    grid = [*np.geomspace(min(C), max(max(C), predict), 24).tolist(), predict]  # the band, then the prediction
    band_lo, band_hi = bootstrap_band(C, L, grid, samples=samples, level=level)
    lo, hi = band_lo.pop(), band_hi.pop()
    out = {**asdict(law), "law": "L(C) = a * C^b + c", "predict_at": predict, "prediction": float(law(predict)),
           "interval": [lo, hi], "interval_level": level, "runs": len(runs), "points": len(C),
           "band": {"compute": grid[:-1], "lo": band_lo, "hi": band_hi},
           "extrapolation": predict / max(C), "residuals": [float(law(c) / l - 1) for c, l in zip(C, L, strict=True)]}
    if len(runs) >= 5 and all("params" in r and "tokens" in r for r in runs):
        out["chinchilla"] = asdict(fit_chinchilla([r["params"] for r in runs], [r["tokens"] for r in runs],
                                                  [r["loss"] for r in runs]))
    return out


def plot_fit(runs: list[dict], fit: dict, path: str | Path, actual: float | None = None,
             baseline: float | None = None) -> Path:
    """Log-log plot of the runs, the fitted L(C), the interval at the predicted compute and, once known, the
    actual loss there; `baseline` (the unigram loss) as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    law = PowerLaw(fit["a"], fit["b"], fit["c"])
    C = np.array([r["compute"] for r in runs])
    xs = np.logspace(math.log10(C.min()) - 0.2, math.log10(fit["predict_at"]) + 0.2, 200)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, law(xs), "-", color="C0", label=f"fit: {fit['a']:.3g} C^{fit['b']:.3f} + {fit['c']:.3f}")
    ax.scatter(C, [r["loss"] for r in runs], color="C0", zorder=3, label=f"{len(runs)} small runs")
    if "band" in fit:
        band = fit["band"]
        ax.fill_between(band["compute"], band["lo"], band["hi"], color="C0", alpha=0.15, lw=0,
                        label=f"{100 * fit['interval_level']:.0f}% bootstrap band")
    lo, hi = fit["interval"]
    ax.errorbar([fit["predict_at"]], [fit["prediction"]], yerr=[[fit["prediction"] - lo], [hi - fit["prediction"]]],
                fmt="s", color="C1", capsize=4, label=f"prediction ({100 * fit['interval_level']:.0f}% interval)")
    if actual is not None:
        ax.scatter([fit["predict_at"]], [actual], marker="*", s=150, color="C3", zorder=4, label="actual")
    if baseline is not None:
        ax.axhline(baseline, ls=":", color="gray", label=f"unigram loss {baseline:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute (FLOPs)")
    ax.set_ylabel("held-out loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
