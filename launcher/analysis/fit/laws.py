"""The seam between the fitter and a law family: one small interface (``registry.LAWS`` holds the
families by the name ``--approach`` takes).

A family says what it fits (``parameters``, for the help text), fits a point set (``fit``, from the
family's own starts or warm-started from an earlier fit), turns a fit into JSON (``result``) and
predicts at targets (``predict``). ``replicates`` refits under bootstrap resampling counts and
predicts again; the default refits one replicate at a time, families with a batched refit
override it. The Huber-on-log-loss families share their objective and multi-start search
(``multistart``); the others keep their own procedures behind the same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from launcher.analysis.fit.points import Points, Targets
from launcher.errors import UserError

METHODS = ("grid", "vpnls")
DEFAULT_METHOD = "vpnls"  # equal or lower objective than the grid on every data set the tests use


@dataclass(frozen=True)
class Options:
    """Everything a family may be told besides the points; each family reads its own."""

    huber_reduce: str = "sum"  # Huber families: sum or mean of the terms (same optimum)
    method: str = DEFAULT_METHOD  # approach 3: variable projection, or the 4500-start grid
    base: dict | None = None  # datacon: fixed E, A, B, alpha, beta of the base law
    loss_approach: str = "3"  # two_stage: the law for (N, D) -> loss
    link: str = "sigmoid"  # two_stage: loss -> metric
    metric_range: tuple[float, float] | str | None = "auto"  # two_stage: bounds; "auto": [0, 1] if all in it


class LawFamily(ABC):
    name: str
    summary: str  # one line for ``ladder fit --help``
    parameters: tuple[str, ...]  # the fitted parameters, as the result names them
    predicts: bool = True  # whether it predicts a value at given (N, D); 1 and 2 predict optima

    @abstractmethod
    def fit(self, points: Points, options: Options, warm: Any = None) -> Any:
        """The family's fit object; ``warm`` is an earlier fit of the same family to start from."""

    @abstractmethod
    def result(self, fit: Any) -> dict:
        """The fit as plain JSON-able values (without ``approach`` and ``n_points``)."""

    def predict(self, fit: Any, targets: Targets) -> np.ndarray:
        raise UserError(f"approach {self.name} predicts compute-optimal N_opt and D_opt, not a value at given (N, D)")

    def stage_loss(self, fit: Any, targets: Targets) -> np.ndarray | None:
        """The intermediate loss a metric is read off (two_stage); None for a law of the value itself."""
        return None

    def replicates(
        self, fit: Any, points: Points, options: Options, counts: np.ndarray, targets: Targets
    ) -> np.ndarray:
        """[R, targets] predictions of refits under each row of ``counts``; NaN where a refit fails."""
        out = np.full((len(counts), len(targets)), np.nan)
        for r, c in enumerate(counts):
            try:
                out[r] = self.predict(self.fit(points.with_weight(c), options, warm=fit), targets)
            except UserError:
                continue
        return out
