"""Every law family by the name ``--approach`` takes: thin adapters over the procedures that have their
own modules (approaches 1, 2, 3, Kaplan, BNSL) and the families that are their own modules
(overtrain, datacon, two_stage)."""

from __future__ import annotations

import numpy as np

from launcher.analysis.fit.bnsl import BnslFit, fit_bnsl
from launcher.analysis.fit.chinchilla import ChinchillaFit, fit_chinchilla, predicted_loss, refit_weighted
from launcher.analysis.fit.datacon import Datacon
from launcher.analysis.fit.envelope import EnvelopeFit, fit_envelope
from launcher.analysis.fit.isoflop import IsoflopFit, fit_isoflop
from launcher.analysis.fit.kaplan import KaplanFit, fit_kaplan
from launcher.analysis.fit.laws import LawFamily, Options
from launcher.analysis.fit.overtrain import WARM_STARTS, Overtrain
from launcher.analysis.fit.points import Points, Targets
from launcher.analysis.fit.twostage import TwoStage
from launcher.analysis.fit.vpnls import fit_approach3
from launcher.errors import UserError


class Envelope(LawFamily):
    name = "1"
    summary = "Chinchilla approach 1: lower envelope of training curves, N_opt ∝ C^a, D_opt ∝ C^b"
    parameters = ("a", "b", "N_coef", "D_coef")
    predicts = False

    def fit(self, points: Points, options: Options, warm=None) -> EnvelopeFit:
        return fit_envelope(points)

    def result(self, fit: EnvelopeFit) -> dict:
        return fit.as_dict()


class Isoflop(LawFamily):
    name = "2"
    summary = "Chinchilla approach 2: a parabola per isoFLOP budget, power laws through the minima"
    parameters = ("a", "b", "N_coef", "D_coef")
    predicts = False

    def fit(self, points: Points, options: Options, warm=None) -> IsoflopFit:
        return fit_isoflop(points)

    def result(self, fit: IsoflopFit) -> dict:
        return fit.as_dict()


class Chinchilla(LawFamily):
    name = "3"
    summary = "Chinchilla approach 3: L = E + A/N^α + B/D^β, Huber on log L (--method vpnls|grid)"
    parameters = ("E", "A", "B", "alpha", "beta")

    def fit(self, points: Points, options: Options, warm: ChinchillaFit | None = None) -> ChinchillaFit:
        if warm is not None:
            return fit_chinchilla(points, huber_reduce=options.huber_reduce, starts=warm.candidates[:WARM_STARTS])
        return fit_approach3(points, options.method, huber_reduce=options.huber_reduce)

    def result(self, fit: ChinchillaFit) -> dict:
        return {**fit.as_dict(), "method": fit.method}

    def predict(self, fit: ChinchillaFit, targets: Targets) -> np.ndarray:
        return fit.loss(targets.N, targets.D)

    def replicates(
        self, fit: ChinchillaFit, points: Points, options: Options, counts: np.ndarray, targets: Targets
    ) -> np.ndarray:
        theta, _ = refit_weighted(points, counts, fit.candidates[:WARM_STARTS], huber_reduce=options.huber_reduce)
        return predicted_loss(theta, targets.N, targets.D)


class Kaplan(LawFamily):
    name = "kaplan"
    summary = "Kaplan et al. 2020: L(N), L(D) and L(N, D) = [(Nc/N)^(αN/αD) + Dc/D]^αD on log L"
    parameters = ("Nc", "Dc", "alpha_N", "alpha_D")

    def fit(self, points: Points, options: Options, warm=None) -> dict:
        return fit_kaplan(points)

    def result(self, fit: dict) -> dict:
        return fit

    def predict(self, fit: dict, targets: Targets) -> np.ndarray:
        joint = fit["L_ND"]
        if "error" in joint:
            raise UserError(joint["error"])
        return KaplanFit(joint["Nc"], joint["Dc"], joint["alpha_N"], joint["alpha_D"], joint["rmse_log"]).loss(
            targets.N, targets.D
        )


class Bnsl(LawFamily):
    name = "bnsl"
    summary = "broken neural scaling law in C (Caballero et al. 2023), one break"
    parameters = ("a", "b", "c0", "breaks")

    def fit(self, points: Points, options: Options, warm=None) -> BnslFit:
        return fit_bnsl(points.C, points.loss, weights=points.weight)

    def result(self, fit: BnslFit) -> dict:
        return {"x": "C", **fit.as_dict()}

    def predict(self, fit: BnslFit, targets: Targets) -> np.ndarray:
        return fit(targets.C)


def _registry() -> dict[str, LawFamily]:
    laws: dict[str, LawFamily] = {
        f.name: f for f in (Envelope(), Isoflop(), Chinchilla(), Kaplan(), Bnsl(), Overtrain(), Datacon())
    }
    laws["two_stage"] = TwoStage(laws)
    return laws


LAWS = _registry()
