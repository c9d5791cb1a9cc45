"""Data-constrained law (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models",
arXiv:2305.16264), ``--approach datacon --unique-col U``.

Repeated tokens and excess parameters are worth less than fresh ones, with decay constants R_D*, R_N*:

    L = E + A/N'^α + B/D'^β
    D' = U_D + U_D·R_D*·(1 − exp(−R_D/R_D*)),   U_D = min(U, D),  R_D = D/U_D − 1  (repetitions)
    N' = U_N + U_N·R_N*·(1 − exp(−R_N/R_N*)),   U_N = min(N, N_opt(U_D)),  R_N = N/U_N − 1

where N_opt(U_D) is the compute-optimal model size for the compute at which U_D tokens are
compute-optimal under the base Chinchilla law (C = 6·N·D): N_opt(U_D) = G·(G·U_D)^(β/α),
G = (α·A/(β·B))^(1/(α+β)).

Fitting procedure, the authors' own (github.com/huggingface/datablations, utils/parametric_fit.ipynb,
cell "FIT OUR DOTS BASED ON EPOCH RANGES OR UNIQUE TOKENS"): the base law E, A, B, α, β is held
fixed and only the raw R_D*, R_N* are fitted, with torch.optim.LBFGS in float32 (lr 0.1, history 10,
strong-Wolfe line search, 50 calls of at most 20 iterations each, torch's default tolerances) on the
sum of Huber terms (δ = 1e-3) of log L̂ − log L, from every pair of R_D*, R_N* ∈ linspace(0, 20, 4)
without the 0 (from which their code gives NaN, 0/0, and drops the start): nine starts; the lowest
objective wins, the first on a tie. Their base came from a Chinchilla fit with α = β to Chinchilla's own C4 IsoFLOP
points (α = β = 0.3527, A = e^6.2554, B = e^7.3050, E = e^0.6255), which gave R_D* = 15.39 and
R_N* = 5.31 on their 182 runs. Here the base is either given (``base``: E, A, B, alpha, beta, e.g.
theirs) or fitted the same way, α = β (the ``overtrain`` fit), to the runs that see each token at
most once (D ≤ U). That procedure gives the headline R_D_star, R_N_star; on their runs and base,
7 of 9 starts end within 0.3% of (15.38, 5.31) and two stall where they start; the best is
(15.378, 5.309) with 0.0158259 (theirs: 0.0158259 at (15.388, 5.310)). An end with R* <= 0 (their
code would keep it: the decay then turns into growth) is dropped.

The published point is not the objective's minimum. R_D* is weakly determined and the objective
falls by 0.12% along a flat valley: the same optimiser in float64 goes from the start (20, 20/3) to
(46.9, 2.33) with 0.0158074, and further along lies (95, 1.7) with 0.0158047. In float32 the
changes along that valley are below the arithmetic's resolution of the sum, so the authors'
line search finds no descent there and stops. ``optima`` therefore also lists every distinct end
point of a float64 search (log R*, so they stay positive, the batched multi-start search of
approach 3) from the same nine starts, with its objective, best first, so that a weakly determined
R* is visible as such; ``objective`` is the headline's, evaluated in float64 like those.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from launcher.analysis.fit import multistart
from launcher.analysis.fit.chinchilla import HUBER_DELTA, REDUCTIONS, ChinchillaFit
from launcher.analysis.fit.laws import LawFamily, Options
from launcher.analysis.fit.overtrain import WARM_STARTS, fit_overtrain
from launcher.analysis.fit.points import Points, Targets
from launcher.errors import UserError

BASE_KEYS = ("E", "A", "B", "alpha", "beta")
START_VALUES = (20.0 / 3.0, 40.0 / 3.0, 20.0)
# The authors' optimiser settings (torch.optim.LBFGS), and how many times their loop calls its step.
AUTHORS_LBFGS: dict[str, Any] = dict(lr=0.1, history_size=10, max_iter=20, line_search_fn="strong_wolfe")
AUTHORS_STEPS = 50


@dataclass(frozen=True)
class Repetition:
    """Per point: unique tokens U_D, U_N and repetitions R_D, R_N under a base law."""

    U_D: np.ndarray
    U_N: np.ndarray
    R_D: np.ndarray
    R_N: np.ndarray

    @classmethod
    def of(cls, base: ChinchillaFit, N, D, U) -> Repetition:
        N, D, U = (np.asarray(v, float) for v in (N, D, U))
        G = (base.alpha * base.A / (base.beta * base.B)) ** (1.0 / (base.alpha + base.beta))
        U_D = np.minimum(U, D)
        U_N = np.minimum(N, G * (G * U_D) ** (base.beta / base.alpha))
        return cls(U_D, U_N, D / U_D - 1.0, N / U_N - 1.0)


def _effective(unique: np.ndarray, repeats: np.ndarray, star: np.ndarray):
    """log of U + U·R*·(1 − e^(−R/R*)) and its derivative in R*, for rows of R* [k] × points."""
    star = star[:, None]
    x = repeats / star
    decay = np.exp(-x)
    value = unique * (1.0 + star * (1.0 - decay))
    d_value = unique * ((1.0 - decay) - x * decay)  # ∂value/∂R*
    return np.log(value), d_value / value


class DataconObjective:
    """Huber(log L̂ − log L) with the base law fixed, over rows of (log R_D*, log R_N*) (natural: R*)."""

    def __init__(self, points: Points, base: ChinchillaFit, weights, reduce: str, delta: float = HUBER_DELTA):
        if reduce not in REDUCTIONS:
            raise UserError(f"huber_reduce: must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
        self.rep = Repetition.of(base, points.N, points.D, points.U)
        self.base, self.delta = base, delta
        self.logL = np.log(points.loss)
        w = np.atleast_2d(np.asarray(weights, float))
        self.weights = w / w.sum(axis=1, keepdims=True) if reduce == "mean" else w

    def log_loss(self, theta: np.ndarray):
        """log L̂ [k, P] and its derivatives in (log R_D*, log R_N*) [k, P, 2]."""
        b = self.base
        star = np.exp(theta)
        logD, dD = _effective(self.rep.U_D, self.rep.R_D, star[:, 0])
        logN, dN = _effective(self.rep.U_N, self.rep.R_N, star[:, 1])
        dD, dN = dD * star[:, :1], dN * star[:, 1:]  # ∂/∂log R* = R*·∂/∂R*
        t_n, t_d = np.log(b.A) - b.alpha * logN, np.log(b.B) - b.beta * logD
        top = np.maximum(np.maximum(t_n, t_d), np.log(b.E))
        e_n, e_d, e_e = np.exp(t_n - top), np.exp(t_d - top), np.exp(np.log(b.E) - top)
        total = e_n + e_d + e_e
        jac = np.stack([-b.beta * dD * e_d / total, -b.alpha * dN * e_n / total], axis=2)
        return top + np.log(total), jac

    def __call__(self, theta: np.ndarray, rows: np.ndarray | None = None):
        rows = np.arange(len(theta)) if rows is None else rows
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # absurd trial steps: rejected
            log_fit, jac = self.log_loss(theta)
        r = log_fit - self.logL
        c = np.clip(r, -self.delta, self.delta)
        w = self.weights[0] if len(self.weights) == 1 else self.weights[rows]
        f = 0.5 * np.sum(c * (2.0 * r - c) * w, axis=1)
        return f, np.einsum("kp,kpj->kj", c * w, jac)

    def to_internal(self, theta: np.ndarray) -> np.ndarray:
        return np.log(np.array(theta, dtype=float, ndmin=2))

    def to_natural(self, internal: np.ndarray) -> np.ndarray:
        return np.exp(np.array(internal, dtype=float, ndmin=2))


def authors_lbfgs(objective: DataconObjective, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """End points [k, 2] (R_D*, R_N*) and objectives [k] (NaN where a start diverged) of the authors'
    float32 L-BFGS on the raw R* from each start, the objective as their loop compares it (the value
    the last step returns)."""
    import torch

    def f32(values) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=torch.float32)

    b, rep = objective.base, objective.rep
    U_N, U_D, R_N, R_D = (f32(v) for v in (rep.U_N, rep.U_D, rep.R_N, rep.R_D))
    log_loss, weights = torch.log(f32(np.exp(objective.logL))), f32(objective.weights[0])
    log_a, log_b, log_e, alpha, beta = (f32(v) for v in (np.log(b.A), np.log(b.B), np.log(b.E), b.alpha, b.beta))

    def huber_sum(star: torch.Tensor) -> torch.Tensor:
        n_eff = U_N + U_N * star[1] * (1 - torch.exp(-R_N / star[1]))
        d_eff = U_D + U_D * star[0] * (1 - torch.exp(-R_D / star[0]))
        terms = [log_a - alpha * torch.log(n_eff), log_b - beta * torch.log(d_eff), log_e.expand(len(U_N))]
        fitted = torch.logsumexp(torch.stack(terms), dim=0)
        huber = torch.nn.functional.huber_loss(fitted, log_loss, delta=objective.delta, reduction="none")
        return (huber * weights).sum()

    def from_start(start: np.ndarray) -> tuple[np.ndarray, float]:
        star = torch.nn.Parameter(f32(start))
        optimiser = torch.optim.LBFGS([star], **AUTHORS_LBFGS)

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            value = huber_sum(star)
            value.backward()
            return value

        for _ in range(AUTHORS_STEPS):
            value = optimiser.step(closure)
        return star.detach().numpy(), float(value.detach())

    ends = [from_start(start) for start in starts]
    return np.array([end for end, _ in ends], dtype=float), np.array([value for _, value in ends])


@dataclass(frozen=True)
class DataconFit:
    base: ChinchillaFit
    base_source: str
    star: np.ndarray  # (R_D*, R_N*)
    objective: float
    huber_reduce: str
    n_starts: int
    n_converged: int  # starts whose end is finite and positive
    candidates: np.ndarray = field(repr=False, compare=False)
    candidate_objectives: np.ndarray = field(repr=False, compare=False)

    def loss(self, N, D, U) -> np.ndarray:
        b = self.base
        rep = Repetition.of(b, N, D, U)
        logD, _ = _effective(rep.U_D, rep.R_D, self.star[:1])
        logN, _ = _effective(rep.U_N, rep.R_N, self.star[1:])
        return b.E + np.exp(np.log(b.A) - b.alpha * logN[0]) + np.exp(np.log(b.B) - b.beta * logD[0])

    def as_dict(self) -> dict:
        R_D, R_N = self.star
        distinct = multistart.best_distinct(self.candidates, self.candidate_objectives, len(self.candidates))
        return {
            "R_D_star": float(R_D),
            "R_N_star": float(R_N),
            **{k: getattr(self.base, k) for k in BASE_KEYS},
            "base": self.base_source,
            "objective": self.objective,
            "huber_delta": HUBER_DELTA,
            "huber_reduce": self.huber_reduce,
            "n_starts": self.n_starts,
            "n_converged": self.n_converged,
            "optima": [
                {"R_D_star": float(rd), "R_N_star": float(rn), "objective": float(f)}
                for (rd, rn), f in zip(self.candidates[distinct], self.candidate_objectives[distinct])
            ],
        }


def base_law(points: Points, options: Options, warm: DataconFit | None) -> tuple[ChinchillaFit, str]:
    """The fixed base: given in ``options.base``, else the α = β fit to runs with D ≤ U."""
    if options.base is not None:
        missing = [k for k in BASE_KEYS if k not in options.base]
        if missing:
            raise UserError(f"--base: missing {', '.join(missing)}; give E, A, B, alpha, beta")
        values = {k: float(options.base[k]) for k in BASE_KEYS}
        if not all(np.isfinite(v) and v > 0 for v in values.values()):
            raise UserError(f"--base: E, A, B, alpha, beta must be positive numbers, got {values}")
        theta = [np.log(values["A"]), np.log(values["B"]), np.log(values["E"]), values["alpha"], values["beta"]]
        return ChinchillaFit.from_theta(
            theta, np.nan, huber_delta=HUBER_DELTA, huber_reduce=options.huber_reduce, n_starts=0, n_converged=0
        ), "given"
    single = points.D <= points.U
    starts = None if warm is None else warm.base.candidates[:WARM_STARTS, :4]
    try:
        fit = fit_overtrain(points.take(single), huber_reduce=options.huber_reduce, starts=starts)
    except UserError as exc:
        raise UserError(
            f"datacon: the base law is fitted to runs with D <= U (single epoch) unless --base gives it: {exc}"
        ) from None
    return fit, f"fitted with alpha = beta to {int((points.weight[single] > 0).sum())} runs with D <= U"


def fit_datacon(points: Points, options: Options, warm: DataconFit | None = None) -> DataconFit:
    if points.U is None:
        raise UserError("datacon: needs each point's unique tokens (U; --unique-col)")
    base, source = base_law(points, options, warm)
    rep = Repetition.of(base, points.N, points.D, points.U)
    used = points.weight > 0
    for what, repeats, why in (("R_D*", rep.R_D, "D > U"), ("R_N*", rep.R_N, "N above the compute-optimal size for U")):
        if not np.any(repeats[used] > 0):
            raise UserError(f"datacon: {what} is undetermined: no run has {why}")
    objective = DataconObjective(points, base, points.weight, options.huber_reduce)
    if warm is None:
        starts = np.array(list(itertools.product(START_VALUES, START_VALUES)))
        search = multistart.fit_from_starts(objective, starts, "datacon")
        candidates, candidate_objectives = search.candidates, search.candidate_objectives
    else:  # a refit (bootstrap): the authors' procedure from the headline alone
        starts, candidates, candidate_objectives = warm.star[None, :], warm.candidates, warm.candidate_objectives
    ends, values = authors_lbfgs(objective, starts)
    finite = np.isfinite(values) & np.all(np.isfinite(ends) & (ends > 0), axis=1)
    if not finite.any():
        raise UserError("datacon: the fit diverged from every start")
    star = ends[np.flatnonzero(finite)[np.argmin(values[finite])]]
    return DataconFit(
        base,
        source,
        star,
        float(objective(np.log(star)[None, :])[0][0]),
        options.huber_reduce,
        len(starts),
        int(finite.sum()),
        candidates,
        candidate_objectives,
    )


class Datacon(LawFamily):
    name = "datacon"
    summary = "Muennighoff et al. 2023: effective data D' and parameters N' with decay R_D*, R_N* (--unique-col)"
    parameters = ("R_D_star", "R_N_star")

    def fit(self, points: Points, options: Options, warm: DataconFit | None = None) -> DataconFit:
        return fit_datacon(points, options, warm)

    def result(self, fit: DataconFit) -> dict:
        return fit.as_dict()

    def predict(self, fit: DataconFit, targets: Targets) -> np.ndarray:
        if targets.U is None:
            raise UserError("datacon: the targets need unique tokens too (--unique-col)")
        return fit.loss(targets.N, targets.D, targets.U)
