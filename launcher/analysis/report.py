"""``ladder report sweep=<name>``: plots, a self-contained ``report.html``, ``summary.txt`` and a W&B summary run.

The page carries everything inline (CSS, PNGs as base64) so that it can be copied off a cluster and
opened anywhere. It is built from what the sweep directory holds: the runs are collected afresh and
``fit.json`` is used when it still matches them (else the sweep is fitted again). A part that could not
be fitted shows its error instead of a plot, so a failed fit still gives a readable page.

The FLOP ledger sets each run's training FLOPs by the exact accounting (``flops`` in metrics.jsonl,
from the model's ``flops_per_token``) beside the 6·N·D rule of thumb: 6ND leaves out attention's
T·d term and so undercounts small models with long contexts.
"""

from __future__ import annotations

import base64
import functools
import html
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from launcher.analysis.collect import Collected, collect_sweep, parse_sweep_args
from launcher.analysis.fitting import (
    BUDGET_ARGUMENT,
    FIT_FILE,
    N_BOOT,
    fingerprint,
    fit_sweep_dir,
    reason,
    summary_lines,
    trusted_recommendation,
    verdict_lines,
)
from launcher.analysis.spent import Spent, plot_spent, sweep_spent, threshold_text
from launcher.files import atomic_write, kept_on_failure
from launcher.numbers import percent, sci, si
from launcher.run.faults import Fault, run_faults
from launcher.run.state import read_state

REPORT_FILE = "report.html"
TARGET_FILE = "target.json"  # the target run and the projection it came from (``launcher.analysis.target``)
SUMMARY_FILE = "summary.txt"
PLOTS_DIR = "plots"
CURVE_PLOT_POINTS = 300  # points drawn per run: a smooth line ...
CURVE_PLOT_TOTAL = 200_000  # ... but fewer per run in sweeps so large that drawing would take minutes
APPROACH_STYLE = {
    "approach1": ("approach 1: curve envelope", "tab:green"),
    "approach2": ("approach 2: isoFLOP", "tab:blue"),
    "approach3": ("approach 3: parametric", "tab:red"),
}


# ------------------------------------------------------------------------------------------ ledger


@dataclass(frozen=True)
class LedgerRow:
    name: str
    state: str
    N: int
    D: float  # tokens trained
    C: float  # training FLOPs, exact accounting
    loss: Optional[float]
    loss_source: Optional[str]

    @property
    def six_nd(self) -> float:
        return 6.0 * self.N * self.D

    @property
    def ratio(self) -> float:
        return self.C / self.six_nd if self.six_nd > 0 else math.nan


def flop_ledger(collected: Collected) -> list[LedgerRow]:
    """One row per collected run: what it trained and what that cost (diverged and unfinished runs too)."""
    return [
        LedgerRow(
            r.name, "diverged" if r.diverged else r.state, r.meta.N, r.D or 0.0, r.C or 0.0, r.loss, r.loss_source
        )
        for r in collected.runs
    ]


# ------------------------------------------------------------------------------------------- plots


def _log_y_plain(ax) -> None:
    """A log y axis labelled 3, 4, 6 rather than 3x10^0: losses span less than a decade."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)


def plot_loss_curves(ax, collected: Collected) -> None:
    from matplotlib import cm, colors

    runs = [r for r in collected.runs if len(collected.curves[r.name])]
    sizes = [r.meta.N for r in runs]
    norm = colors.LogNorm(min(sizes), max(sizes) * (1.0001 if min(sizes) == max(sizes) else 1.0))
    cmap = cm.viridis
    per_run = max(20, min(CURVE_PLOT_POINTS, CURVE_PLOT_TOTAL // max(1, len(runs))))
    for r in sorted(runs, key=lambda r: -r.meta.N):
        curve = collected.curves[r.name]
        keep = curve.thinned(per_run)
        C, loss = curve.C[keep], curve.train_loss[keep]
        ok = np.isfinite(loss) & (C > 0)
        if r.diverged:
            ax.plot(C[ok], loss[ok], color="0.6", lw=0.8, ls="--")
            continue
        ax.plot(C[ok], loss[ok], color=cmap(norm(r.meta.N)), lw=0.9, alpha=0.85)
        val = np.isfinite(curve.val_loss) & (curve.C > 0)
        ax.plot(curve.C[val], curve.val_loss[val], ":", marker=".", ms=3, lw=0.9, color=cmap(norm(r.meta.N)))
        if r.loss is not None and r.state == "completed":
            ax.plot([r.C], [r.loss], "o", ms=3.5, color=cmap(norm(r.meta.N)), mec="k", mew=0.4)
    ax.set_xscale("log")
    _log_y_plain(ax)
    ax.set_xlabel("training FLOPs so far")
    ax.set_ylabel("loss: train (solid), validation (dotted)")
    finite = np.concatenate(
        [np.r_[collected.curves[r.name].train_loss, collected.curves[r.name].val_loss] for r in runs if not r.diverged]
        or [np.ones(1)]
    )
    finite = finite[np.isfinite(finite)]
    if finite.size:
        ax.set_ylim(finite.min() * 0.97, min(finite.max(), np.percentile(finite, 99.5)) * 1.03)
    bar = ax.figure.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax)
    bar.set_label("N (parameters)")
    ax.set_title(
        "Training curves, coloured by model size" + ("; dashed: diverged" if any(r.diverged for r in runs) else "")
    )


def plot_isoflop(ax, collected: Collected, fit: dict) -> None:
    from matplotlib import cm

    points = collected.final_points
    labels = sorted({p["budget"] for p in points if p.get("budget") is not None}, key=float)
    parts = {b.get("budget"): b for b in (fit.get("approach2") or {}).get("budgets", [])}
    colours = cm.plasma(np.linspace(0.05, 0.85, max(1, len(labels))))
    for colour, label in zip(colours, labels):
        group = [p for p in points if p.get("budget") == label]
        N = np.array([p["N"] for p in group], float)
        loss = np.array([p["loss"] for p in group], float)
        ax.plot(N, loss, "o", color=colour, ms=5, label=f"C = {sci(float(label))}")
        part = parts.get(label) or parts.get(float(label))
        if part and part.get("parabola_lnN"):
            x = np.linspace(np.log(N.min()) - 0.3, np.log(N.max()) + 0.3, 100)
            ax.plot(np.exp(x), np.polyval(part["parabola_lnN"], x), "-", color=colour, lw=1.2)
            ax.plot([part["N_opt"]], [part["loss_opt"]], "*", color=colour, ms=13, mec="k", mew=0.6)
    if not labels:  # not an isoFLOP sweep: final loss against size
        ax.plot([p["N"] for p in points], [p["loss"] for p in points], "o")
    ax.set_xscale("log")
    ax.set_xlabel("N (parameters)")
    ax.set_ylabel("final loss")
    ax.set_title(
        "IsoFLOP curves: fitted parabolas in ln N, stars at their minima"
        if "error" not in (fit.get("approach2") or {})
        else "Final loss by model size (no isoFLOP fit)"
    )
    if labels:
        ax.legend(fontsize=8)


def plot_frontier(axes, collected: Collected, fit: dict) -> None:
    frontier = fit.get("frontier") or {}
    C = np.array(frontier.get("C") or [], float)
    rec = fit.get("recommendation") or {}
    minima = (fit.get("approach2") or {}).get("budgets", [])
    for ax, key, label in ((axes[0], "N_opt", "N_opt (parameters)"), (axes[1], "D_opt", "D_opt (tokens)")):
        for approach, (name, colour) in APPROACH_STYLE.items():
            part = frontier.get(approach)
            if not part or part.get(key) is None:
                continue
            y = np.array(part[key], float)
            ax.plot(C, y, color=colour, lw=1.5, label=name)
            lo, hi = part.get(f"{key}_lo"), part.get(f"{key}_hi")
            if lo is not None and hi is not None:
                lo, hi = np.array(lo, float), np.array(hi, float)
                ok = np.isfinite(lo) & np.isfinite(hi)
                ax.fill_between(C[ok], lo[ok], hi[ok], color=colour, alpha=0.18, lw=0)
        if minima:
            ax.plot([m["C"] for m in minima], [m[key] for m in minima], "o", color="k", ms=4, label="isoFLOP minima")
        if "error" not in rec and rec.get(key):
            ci = rec.get(f"{key}_ci") or [None, None]
            # a percentile interval need not contain the full-data estimate
            err = None if None in ci else [[max(0.0, rec[key] - ci[0])], [max(0.0, ci[1] - rec[key])]]
            ax.errorbar(
                [rec["C"]],
                [rec[key]],
                yerr=err,
                fmt="*",
                ms=14,
                color="gold",
                mec="k",
                ecolor="k",
                capsize=3,
                label=f"recommendation at C = {sci(rec['C'])}",
                zorder=5,
            )
            ax.axvline(rec["C"], color="0.5", ls=":", lw=1)
        beyond = (fit.get("projection") or {}).get("beyond_C")
        if beyond and len(C) and C.max() > beyond:
            ax.axvspan(beyond, C.max(), color="0.85", alpha=0.5, lw=0, label="projection (beyond every run)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    axes[0].set_title("Compute-optimal model size (bands: bootstrap 95%)")
    axes[1].set_title("Compute-optimal tokens (bands: bootstrap 95%)")


def plot_predicted(ax, collected: Collected, fit: dict) -> None:
    runs = (fit.get("approach3") or {}).get("runs") or []
    observed = np.array([r["loss"] for r in runs], float)
    predicted = np.array([r["predicted_loss"] for r in runs], float)
    budgets = [r.get("budget") for r in runs]
    labelled = sorted({b for b in budgets if b is not None}, key=float)
    if labelled:
        from matplotlib import cm

        colours = dict(zip(labelled, cm.plasma(np.linspace(0.05, 0.85, len(labelled)))))
        for b in labelled:
            mask = np.array([x == b for x in budgets])
            ax.plot(observed[mask], predicted[mask], "o", color=colours[b], label=f"C = {sci(float(b))}")
        ax.legend(fontsize=8)
    else:
        ax.plot(observed, predicted, "o")
    held = (fit.get("holdout") or {}).get("runs") or []
    if held:
        ax.plot(
            [r["loss"] for r in held],
            [r["predicted_loss"] for r in held],
            "X",
            color="k",
            ms=8,
            label="held out: predicted, not fitted",
        )
        ax.legend(fontsize=8)
        observed = np.r_[observed, [r["loss"] for r in held]]
        predicted = np.r_[predicted, [r["predicted_loss"] for r in held]]
    lo, hi = min(observed.min(), predicted.min()), max(observed.max(), predicted.max())
    pad = 0.03 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="y = x")
    rel = np.abs(predicted / observed - 1.0)
    ax.set_xlabel("observed final loss")
    ax.set_ylabel("predicted by approach 3")
    ax.set_title(f"Predicted vs observed: mean |error| {100 * rel.mean():.2f}%, max {100 * rel.max():.2f}%")


def plot_metric(ax, key: str, part: dict) -> None:
    """A metric against the loss: the runs (fitted, held out), the fitted link, and the recommendation's projection."""
    from launcher.analysis.fit.twostage import KINDS

    law = part["metric_law"]
    predictions = part.get("predictions") or []
    for kind, style, label in (("fitted", "o", "fitted runs"), ("prediction", "X", "held out: predicted, not fitted")):
        rows = [p for p in predictions if p.get("kind") == kind and p.get("observed") is not None]
        if rows:
            ax.plot(
                [p["loss"] for p in rows],
                [p["observed"] for p in rows],
                style,
                ms=6 if kind == "fitted" else 9,
                color="tab:blue" if kind == "fitted" else "k",
                label=label,
            )
    losses = np.array([p["loss"] for p in predictions], float)
    grid = np.linspace(losses.min(), losses.max(), 200)
    ax.plot(grid, KINDS[law["link"]].value(law, grid), "-", color="tab:red", lw=1.5, label=f"{law['link']} link")
    for p in predictions:
        if p.get("kind") == "projection":
            err = (
                [[max(0.0, p["metric"] - p["lo"])], [max(0.0, p["hi"] - p["metric"])]]
                if p.get("lo") is not None and p.get("hi") is not None
                else None
            )
            ax.errorbar(
                [p["loss"]],
                [p["metric"]],
                yerr=err,
                fmt="*",
                ms=14,
                color="gold",
                mec="k",
                ecolor="k",
                capsize=3,
                label="recommendation (projection)",
                zorder=5,
            )
    ax.set_xlabel("loss (step 1: predicted from N, D by approach 3)")
    ax.set_ylabel(key)
    ax.set_title(f"{key} against loss (two steps; rmse {sci(law.get('rmse'))})")
    ax.legend(fontsize=8)


@dataclass
class Plot:
    name: str
    title: str
    path: Optional[Path] = None
    error: Optional[str] = None


def _render(path: Path, draw: Callable, ncols: int = 1, size=(7.5, 5.0)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(size[0] * ncols, size[1]), squeeze=False)
    try:
        draw(axes[0] if ncols > 1 else axes[0][0])
        for ax in axes[0]:
            ax.grid(True, which="major", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def make_plots(sweep_dir: Path, collected: Collected, fit: dict, spent: Sequence[Spent] = ()) -> list[Plot]:
    """Every plot the data supports, as plots/<name>.png; the others carry the reason they are missing."""
    out_dir = sweep_dir / PLOTS_DIR
    out_dir.mkdir(exist_ok=True)
    approach3 = fit.get("approach3") or {}
    plots = [
        (
            Plot("loss_curves", "Loss curves"),
            lambda ax: plot_loss_curves(ax, collected),
            1,
            None if collected.curves else "no run has a curve",
        ),
        (
            Plot("isoflop", "IsoFLOP curves"),
            lambda ax: plot_isoflop(ax, collected, fit),
            1,
            None if collected.final_points else "no completed run",
        ),
        (
            Plot("frontier", "Compute-optimal frontier"),
            lambda axes: plot_frontier(axes, collected, fit),
            2,
            fit.get("error") or (None if (fit.get("frontier") or {}).get("C") else "the fit has no frontier"),
        ),
        (
            Plot("predicted_vs_observed", "Predicted vs observed loss"),
            lambda ax: plot_predicted(ax, collected, fit),
            1,
            fit.get("error")
            or approach3.get("error")
            or (None if approach3.get("runs") else "approach 3 was not fitted"),
        ),
        (
            Plot("compute_spent", "Compute spent"),
            lambda ax: plot_spent(ax, spent, _target_flops(sweep_dir)),
            1,
            None if spent else "no run logged any step",
        ),
    ]
    for key, part in (fit.get("metrics") or {}).items():
        plots.append(
            (
                Plot(f"metric_{key}", f"{key} against loss"),
                functools.partial(plot_metric, key=key, part=part),
                1,
                part.get("error"),
            )
        )
    for plot, draw, ncols, missing in plots:
        stale = out_dir / f"{plot.name}.png"
        if missing:
            plot.error = missing
            stale.unlink(missing_ok=True)
            continue
        try:
            _render(stale, draw, ncols)
            plot.path = stale
        except Exception as exc:  # noqa: BLE001 - one odd plot must not cost the whole report
            plot.error = f"{type(exc).__name__}: {exc}"
    return [p for p, *_ in plots]


# -------------------------------------------------------------------------------------------- page


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1180px;
padding:16px 24px;color:#1d2329;line-height:1.4}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #d0d7de;padding-bottom:.2em}
.meta{color:#57606a;font-size:.9em}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid #d0d7de;border-radius:8px;padding:10px 14px;min-width:170px;background:#f6f8fa}
.card .k{font-size:.8em;color:#57606a}.card .v{font-size:1.35em;font-weight:600}.card .ci{font-size:.8em;color:#57606a}
table{border-collapse:collapse;font-size:.88em;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f6f8fa}td.l,th.l{text-align:left}td.err{color:#82071e;background:#ffebe9;white-space:normal}
tr.total td{font-weight:600;background:#f6f8fa}
.error{border:1px solid #cf222e;background:#ffebe9;color:#82071e;border-radius:6px;padding:8px 12px;margin:8px 0}
.warn{border:1px solid #d4a72c;background:#fff8c5;border-radius:6px;padding:8px 12px;margin:8px 0;font-size:.9em}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:10px 18px}.plots .wide{grid-column:1 / span 2}
figure{margin:6px 0}figure img{width:100%;border:1px solid #d0d7de;border-radius:4px}
figcaption{color:#57606a;font-size:.88em}
pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:10px;white-space:pre-wrap;font-size:.85em}
.scroll{max-height:640px;overflow-y:auto;display:inline-block}
"""  # noqa: E501 - one CSS rule a line: the page's bytes stay as they are

WIDE_PLOTS = {"frontier"}
CAPTIONS = {
    "loss_curves": "Train (solid) and validation (dotted) loss against training FLOPs for every run (log-log), "
    "coloured by parameter count; large dots mark the final loss the fits use.",
    "isoflop": "Final loss against model size within each FLOP budget, the parabola in ln N fitted to each "
    "budget (approach 2) and its minimum.",
    "frontier": "The fitted compute-optimal N_opt(C) and D_opt(C) of each approach, with bootstrap 95% bands, "
    "the isoFLOP minima and the recommendation for the budget.",
    "predicted_vs_observed": "Final loss of every run against the loss approach 3's fitted law predicts for it.",
    "compute_spent": "FLOPs the sweep computed (useful, recomputed by retries and resumes, evaluation, "
    "calibration; the projected target run where ladder project made one), with the 1e25 and "
    "1e26 FLOP reporting thresholds as lines.",
}
METRIC_CAPTION = (
    "A metric the runs log against their loss: the last logged value of each run, the link fitted "
    "from loss to the metric, and the recommendation's projected value (step 1 predicts its loss)."
)


def _e(text) -> str:
    return html.escape(str(text))


def _ci_text(ci, fmt=si) -> str:
    if not ci or None in ci:
        return ""
    return f"95% CI {fmt(ci[0])} – {fmt(ci[1])}"


def _card(key: str, value: str, ci: str = "") -> str:
    return (
        f'<div class="card"><div class="k">{_e(key)}</div><div class="v">{_e(value)}</div>'
        f'<div class="ci">{_e(ci)}</div></div>'
    )


def _cell(fit: dict, approach: str, name: str) -> str:
    part = fit.get(approach) or {}
    value = part.get(name)
    if value is None:
        return "<td>–</td>"
    ci = (((fit.get("bootstrap") or {}).get(approach) or {}).get("ci") or {}).get(name)
    ci_html = f'<br><span class="meta">[{sci(ci[0])}, {sci(ci[1])}]</span>' if ci and None not in ci else ""
    return f"<td>{sci(value)}{ci_html}</td>"


def _fit_table(fit: dict) -> str:
    names = ("a", "b", "alpha", "beta", "E", "A", "B")
    head = "".join(f"<th>{n}</th>" for n in ("a (N_opt ∝ C^a)", "b (D_opt ∝ C^b)", "α", "β", "E", "A", "B"))
    rows = []
    for approach, (title, _) in APPROACH_STYLE.items():
        part = fit.get(approach) or {}
        if "error" in part:
            rows.append(
                f'<tr><td class="l">{_e(title)}</td><td class="l err" colspan="{len(names)}">'
                f"{_e(reason(part, title.split(':')[0]))}</td></tr>"
            )
        else:
            rows.append(
                f'<tr><td class="l">{_e(title)}</td>' + "".join(_cell(fit, approach, n) for n in names) + "</tr>"
            )
    kaplan = fit.get("kaplan") or {}
    for key, exponent, scale in (("L_N", "alpha_N", "Nc"), ("L_D", "alpha_D", "Dc")):
        part = kaplan.get(key) or {}
        text = (
            _e(reason(part, f"kaplan L({key[-1]})"))
            if "error" in part
            else f"L = ({scale}/x)^{exponent}: {exponent} = {sci(part.get(exponent))}, {scale} = {sci(part.get(scale))}"
        )
        rows.append(f'<tr><td class="l">Kaplan {key}</td><td class="l" colspan="{len(names)}">{text}</td></tr>')
    bnsl = fit.get("bnsl") or {}
    text = (
        _e(reason(bnsl, "bnsl"))
        if "error" in bnsl
        else f"loss against C, {len(bnsl.get('breaks') or [])} break(s), rmse(log loss) = {sci(bnsl.get('rmse_log'))}"
    )
    rows.append(f'<tr><td class="l">BNSL</td><td class="l" colspan="{len(names)}">{text}</td></tr>')
    return f'<table><tr><th class="l">law</th>{head}</tr>{"".join(rows)}</table>'


def _extrapolation(fit: dict) -> str:
    ext = fit.get("extrapolation") or {}
    if "error" in ext:
        return f'<p class="meta">{_e(reason(ext, "extrapolation"))}</p>'
    seen = ext.get("observed") or {}
    rows = []
    for approach in ("approach2", "approach3"):
        part = ext.get(approach) or {}
        if "error" in part:
            rows.append(
                f'<tr><td class="l">{approach}</td><td class="l" colspan="4">'
                f"{_e(reason(part, approach.replace('approach', 'approach ')))}</td></tr>"
            )
        else:
            rows.append(
                f'<tr><td class="l">{approach}</td><td>{si(part["N_opt"])}</td>'
                f"<td>{percent(part.get('rel_error_N_opt'))}</td><td>{sci(part.get('loss_opt'))}</td>"
                f"<td>{percent(part.get('rel_error_loss'), '+.2f')}</td></tr>"
            )
    return (
        f"<p>Fitted without the largest budget (C = {sci(ext.get('C'))}), then asked for its optimum: "
        f"observed N_opt {si(seen.get('N_opt'))}, loss {sci(seen.get('loss_opt'))} "
        f"(from the {_e(seen.get('from'))})."
        f'</p><table><tr><th class="l">law</th><th>predicted N_opt</th><th>error</th><th>predicted loss</th>'
        f"<th>error</th></tr>{''.join(rows)}</table>"
    )


def _holdout(fit: dict) -> str:
    """Held-out runs: predictions of the fit of the other runs, checked against what they reached."""
    held = fit.get("holdout") or {}
    if "error" in held:
        return f'<p class="meta">{_e(reason(held, "holdout"))}</p>'
    runs = held.get("runs") or []
    if not runs:
        return '<p class="meta">No run is held out (sweep.holdout in the sweep config selects runs to predict).</p>'
    rows = [
        f'<tr><td class="l">{_e(r["name"])}</td><td>{si(r["N"])}</td><td>{si(r["D"])}</td><td>{sci(r["C"])}</td>'
        f"<td>{r['loss']:.4f}</td><td>{r['predicted_loss']:.4f}</td>"
        f"<td>{_ci_text([r['lo'], r['hi']], lambda v: f'{v:.4f}')}</td>"
        f"<td>{percent(r['rel_error'], '+.2f')}</td><td>{'yes' if r['inside'] else '<b>no</b>'}</td></tr>"
        for r in runs
    ]
    return (
        f"<p>Predictions: {len(runs)} run(s) trained but left out of the fit, predicted by approach 3 from the "
        f"others: median |error| {percent(held.get('median_abs_rel_error'), '.2f')}, worst "
        f"{percent(held.get('worst_abs_rel_error'), '.2f')}, "
        f"{held.get('n_inside')} of {len(runs)} inside the interval.</p>"
        '<table><tr><th class="l">run</th><th>N</th><th>D</th><th>C</th><th>reached</th><th>predicted</th>'
        f"<th>interval</th><th>error</th><th>inside</th></tr>{''.join(rows)}</table>"
    )


def target_outcome(sweep_dir: Path, collected: Collected) -> Optional[dict]:
    """The target run (target.json) beside the projection it was made from: its state and final loss
    against the projected loss and interval; None when the sweep has no target run."""
    import json

    try:
        record = json.loads((sweep_dir / TARGET_FILE).read_text())
        run, projection = record["run"], record["projection"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    reached = next((r for r in collected.runs if r.name == run["name"]), None)
    finished = reached if reached is not None and reached.state == "completed" else None
    loss = finished.loss if finished is not None else None
    lo, hi = projection["loss_lo"], projection["loss_hi"]
    return {
        "name": run["name"],
        "state": reached.state if reached is not None else "not started",
        "N": run["N"],
        "D": run["D"],
        "C": run["C"],
        "loss": loss,
        "loss_source": finished.loss_source if finished is not None else None,
        "projected_loss": projection["loss"],
        "projected_lo": lo,
        "projected_hi": hi,
        "rel_error": None if loss is None else loss / projection["loss"] - 1.0,
        "inside": None if loss is None else lo <= loss <= hi,
    }


def _target(outcome: Optional[dict]) -> str:
    if outcome is None:
        return '<p class="meta">No target run (ladder submit --target trains the run the projection recommends).</p>'
    o = outcome
    reached = (
        f"<td>{o['loss']:.4f}</td><td>{percent(o['rel_error'], '+.2f')}</td>"
        f"<td>{'yes' if o['inside'] else '<b>no</b>'}</td>"
        if o["loss"] is not None
        else "<td>–</td><td>–</td><td>–</td>"
    )
    source = f" ({_e(o['loss_source'])})" if o["loss_source"] else ""
    return (
        f"<p>The run the projection recommended ({_e(TARGET_FILE)}), trained and kept out of the fit: its final "
        f"loss{source} beside the projected loss and its 95% interval.</p>"
        '<table><tr><th class="l">run</th><th class="l">state</th><th>N</th><th>D</th><th>C</th>'
        "<th>projected</th><th>interval</th><th>reached</th><th>error</th><th>inside</th></tr>"
        f'<tr><td class="l">{_e(o["name"])}</td><td class="l">{_e(o["state"])}</td><td>{si(o["N"])}</td>'
        f"<td>{si(o['D'])}</td><td>{sci(o['C'])}</td><td>{o['projected_loss']:.4f}</td>"
        f"<td>{_ci_text([o['projected_lo'], o['projected_hi']], lambda v: f'{v:.4f}')}</td>{reached}</tr></table>"
    )


def _metrics(fit: dict) -> str:
    """Each metric's two-step fit: the link's parameters and every run's value, fitted, predicted or projected."""
    parts = []
    for key, part in (fit.get("metrics") or {}).items():
        if "error" in part:
            parts.append(f'<div class="warn"><b>{_e(key)}:</b> {_e(part["error"])}</div>')
            continue
        law = part["metric_law"]
        params = ", ".join(f"{k} = {sci(v)}" for k, v in law.items() if isinstance(v, (int, float)))
        rows = [
            f'<tr><td class="l">{_e(p["name"])}</td><td class="l">{_e(p["kind"])}</td><td>{p["loss"]:.4f}</td>'
            f"<td>{sci(p.get('observed'), '.4g', '–')}</td><td>{p['metric']:.4g}</td>"
            f"<td>{_ci_text([p.get('lo'), p.get('hi')], lambda v: f'{v:.4g}')}</td>"
            f"<td>{percent(p.get('rel_error'), '+.2f') if p.get('rel_error') is not None else '–'}</td></tr>"
            for p in part.get("predictions") or []
        ]
        parts.append(
            f"<p><b>{_e(key)}</b> in two steps: (N, D) → loss by approach {_e(part.get('loss_approach'))}, "
            f"then loss → {_e(key)} by the {_e(law['link'])} link ({_e(params)})."
            + (f" Not logged by: {_e(', '.join(part['not_logged']))}." if part.get("not_logged") else "")
            + '</p><div class="scroll"><table><tr><th class="l">run</th><th class="l">kind</th>'
            f"<th>loss (step 1)</th><th>reached</th><th>predicted</th><th>interval</th><th>error</th></tr>"
            f"{''.join(rows)}</table></div>"
        )
    return "".join(parts)


def _projection_note(fit: dict) -> str:
    """Says whether the recommendation is a projection (beyond the compute of every run) or within the runs."""
    rec, beyond = fit.get("recommendation") or {}, (fit.get("projection") or {}).get("beyond_C")
    if rec.get("kind") != "projection":
        return ""
    return (
        f" <b>A projection:</b> C = {sci(rec['C'])} lies beyond every run (largest C = {sci(beyond)}), "
        f"so no run checks it."
    )


def _ledger(rows: list[LedgerRow]) -> str:
    total_c, total_6nd = sum(r.C for r in rows), sum(r.six_nd for r in rows)
    ratio = total_c / total_6nd if total_6nd else math.nan
    body = [
        f'<tr class="total"><td class="l">sweep total</td><td class="l">{len(rows)} runs</td><td></td>'
        f"<td>{si(sum(r.D for r in rows))}</td><td>{sci(total_c)}</td><td>{sci(total_6nd)}</td>"
        f"<td>{sci(ratio, '.3f', '–')}</td><td></td><td></td></tr>"
    ]
    for r in rows:
        loss = "–" if r.loss is None else f"{r.loss:.4f}"
        body.append(
            f'<tr><td class="l">{_e(r.name)}</td><td class="l">{_e(r.state)}</td><td>{si(r.N)}</td>'
            f"<td>{si(r.D)}</td><td>{sci(r.C)}</td><td>{sci(r.six_nd)}</td><td>{sci(r.ratio, '.3f', '–')}</td>"
            f'<td>{loss}</td><td class="l">{_e(r.loss_source or "")}</td></tr>'
        )
    return (
        '<div class="scroll"><table><tr><th class="l">run</th><th class="l">state</th><th>N</th>'
        "<th>D trained</th><th>C exact (FLOPs)</th><th>6·N·D</th><th>C / 6ND</th><th>final loss</th>"
        f'<th class="l">loss from</th></tr>{"".join(body)}</table></div>'
    )


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _target_flops(sweep_dir: Path) -> dict[str, float]:
    """The projected target run's FLOPs (``ladder project``'s projection.json), to draw beside the sweep's."""
    import json

    try:
        return {"projected target run": float(json.loads((sweep_dir / "projection.json").read_text())["flops"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _spent(spent: list[Spent]) -> str:
    runs = [s for s in spent if s.kind == "run"]
    useful, total = sum(s.useful for s in runs), sum(s.total for s in spent)
    retried = [s for s in runs if s.attempts > 1]
    return (
        f"<p>Useful training FLOPs (the curves the runs kept): {sci(useful)}; computed over all "
        f"{sum(s.attempts for s in spent)} attempts: {sci(sum(s.training for s in runs))} "
        f"({sci(sum(s.recomputed for s in runs))} recomputed by {len(retried)} runs with retries or resumes); "
        f"evaluation {sci(sum(s.evaluation for s in spent))}; calibration "
        f"{sci(sum(s.training for s in spent if s.kind == 'calibration'))}; <b>total {sci(total)}</b>.</p>"
        f'<p class="meta">{_e(threshold_text(total))}</p>'
    )


def _faults(faults: Sequence[tuple[str, list[Fault]]]) -> str:
    rows = [
        f'<tr><td class="l">{_e(name)}</td><td class="l">{f.kind}</td><td>{"" if f.attempt is None else f.attempt}</td>'
        f'<td>{"" if f.step is None else f.step}</td><td class="l">{_e(f.where)}</td>'
        f"<td>{'' if f.skipped is None else f'[{f.skipped[0]}, {f.skipped[1]})'}</td></tr>"
        for name, found in faults
        for f in found
    ]
    if not rows:
        return '<p class="meta">No run hung or rewound.</p>'
    return (
        '<div class="scroll"><table><tr><th class="l">run</th><th class="l">fault</th><th>attempt</th><th>step</th>'
        f'<th class="l">where</th><th>data steps skipped</th></tr>{"".join(rows)}</table></div>'
    )


def render_html(
    sweep_dir: Path,
    collected: Collected,
    fit: dict,
    plots: list[Plot],
    summary: list[str],
    spent: Sequence[Spent] = (),
    faults: Sequence[tuple[str, list[Fault]]] = (),
) -> str:
    rec = trusted_recommendation(fit) or fit.get("recommendation") or {}
    inputs = fit.get("inputs") or {}
    parts = [
        f"<h1>Scaling-law report: {_e(sweep_dir.name)}</h1>",
        f'<p class="meta">{_e(sweep_dir.resolve())} · {time.strftime("%Y-%m-%d %H:%M:%S")} · '
        f"{len(collected.runs)} runs collected, {len(collected.final_points)} completed runs fitted, "
        f"{len(collected.skipped)} skipped</p>",
    ]
    if "error" in fit:
        parts.append(f'<div class="error"><b>The fit failed:</b> {_e(fit["error"])}</div>')
    verdict = verdict_lines(fit)
    if verdict:
        agree = (fit.get("diagnostics") or {}).get("verdict") == "agree"
        parts += [
            "<h2>Verdict</h2>",
            f'<div class="{"meta" if agree else "warn"}"><pre>{_e(chr(10).join(verdict))}</pre></div>',
        ]
    parts.append("<h2>Recommendation</h2>")
    if "error" in rec or not rec:
        why = rec.get("error", fit.get("error", "no fit"))
        source = inputs.get("budget_source", "")
        parts.append(
            f'<div class="error">No recommendation: {_e(why)}'
            f"{_e(f' ({source})') if source.startswith('no budget') else ''}</div>"
        )
    else:
        parts.append(
            '<div class="cards">'
            + _card("compute budget C", f"{sci(rec['C'])} FLOPs", inputs.get("budget_source", ""))
            + _card("N_opt (parameters)", si(rec["N_opt"]), _ci_text(rec.get("N_opt_ci")))
            + _card("D_opt (tokens)", si(rec["D_opt"]), _ci_text(rec.get("D_opt_ci")))
            + _card("tokens per parameter", sci(rec["tokens_per_param"]))
            + _card(
                "predicted loss",
                sci(rec["predicted_loss"], ".4g"),
                _ci_text(rec.get("predicted_loss_ci"), lambda v: sci(v, ".4g")),
            )
            + f'</div><p class="meta">From {_e(rec.get("source"))}; intervals are bootstrap '
            f"percentiles over {(fit.get('bootstrap') or {}).get('n_boot', '?')} resamples of the runs."
            f"{_projection_note(fit)}</p>"
        )
    if "error" not in fit:
        parts += [
            "<h2>Fitted laws</h2>",
            _fit_table(fit),
            "<h2>Extrapolation check</h2>",
            _extrapolation(fit),
            "<h2>Held-out runs</h2>",
            _holdout(fit),
            "<h2>Target run</h2>",
            _target(target_outcome(sweep_dir, collected)),
        ]
        if fit.get("metrics"):
            parts += ["<h2>Downstream metrics</h2>", _metrics(fit)]
    parts.append('<h2>Plots</h2><div class="plots">')
    for plot in plots:
        wide = ' class="wide"' if plot.name in WIDE_PLOTS else ""
        if plot.path is not None:
            parts.append(
                f'<figure{wide}><img alt="{_e(plot.title)}" src="{_image(plot.path)}">'
                f"<figcaption>{_e(CAPTIONS.get(plot.name, METRIC_CAPTION))} "
                f"({_e(PLOTS_DIR)}/{_e(plot.path.name)})</figcaption>"
                f"</figure>"
            )
        else:
            parts.append(f'<div class="warn"><b>{_e(plot.title)}:</b> not drawn: {_e(plot.error)}</div>')
    parts.append("</div>")
    parts += [
        "<h2>FLOP ledger</h2>",
        "<p class=\"meta\">C exact: the runs' logged training FLOPs (the model's exact per-token count × "
        "tokens). 6·N·D uses the total parameter count N; a ratio above 1 is work 6ND does not see "
        "(attention scores grow with context length and matter most in small models).</p>",
        _ledger(flop_ledger(collected)),
        "<h3>Compute spent</h3>",
        _spent(list(spent)),
        "<h2>Hangs and rewinds</h2>",
        '<p class="meta">Hangs: ranks silent for cluster.hang_timeout_s, killed and retried from the last '
        "checkpoint. Rewinds: a streak of loss spikes, undone by going back to the checkpoint before it and "
        "skipping the data read since.</p>",
        _faults(faults),
    ]
    if collected.skipped or collected.warnings:
        parts.append("<h2>Collection notes</h2>")
        parts += [f'<div class="warn">skipped <b>{_e(n)}</b>: {_e(why)}</div>' for n, why in collected.skipped]
        if collected.warnings:
            parts.append("<ul>" + "".join(f"<li>{_e(w)}</li>" for w in collected.warnings) + "</ul>")
    parts += ["<h2>Summary (summary.txt)</h2>", f"<pre>{_e(chr(10).join(summary))}</pre>"]
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(sweep_dir.name)}: scaling-law '
        f"report</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )


# ----------------------------------------------------------------------------------------- report


def _current_fit(sweep_dir: Path, collected: Collected) -> dict:
    """fit.json if it was fitted to exactly these runs, else a new fit (same budget, resamples and seed)."""
    import json

    try:
        fit = json.loads((sweep_dir / FIT_FILE).read_text())
        inputs = fit["inputs"]
        logged = sum(len(collected.curves[r.name]) for r in collected.in_fit)
        if inputs["fingerprint"] == fingerprint(
            collected.final_points, logged, inputs["budget_flops"], inputs["n_boot"], inputs["seed"]
        ):
            return fit
        budget = inputs["budget_flops"] if inputs.get("budget_source") == BUDGET_ARGUMENT else None
        return fit_sweep_dir(sweep_dir, budget, n_boot=inputs["n_boot"], seed=inputs["seed"], collected=collected)
    except (OSError, ValueError, KeyError, TypeError):
        return fit_sweep_dir(sweep_dir, n_boot=N_BOOT, collected=collected)


def write_report(
    sweep_dir: str | os.PathLike, *, wandb_mode: Optional[str] = None, collected: Optional[Collected] = None
) -> Path:
    """plots/*.png, report.html, summary.txt and (unless W&B is disabled) the W&B summary run of a sweep.

    ``collected``: the sweep as just collected, to save collecting it again.
    """
    from launcher.analysis.wandb_sync import log_summary_run

    sweep_dir = Path(sweep_dir)
    path = sweep_dir / REPORT_FILE
    with kept_on_failure(path):  # a failed report leaves the last good one, its error in report.error.json
        collected = collected or collect_sweep(sweep_dir)
        fit = _current_fit(sweep_dir, collected)
        spent = sweep_spent(sweep_dir, [(r.name, r.meta.run_dir) for r in collected.runs])
        plots = make_plots(sweep_dir, collected, fit, spent)
        summary = summary_lines(fit)
        states = [(r.name, read_state(r.meta.run_dir, warn=True)) for r in collected.runs]
        faults = [(name, run_faults(state.to_json() if state else None)) for name, state in states]
        page = render_html(sweep_dir, collected, fit, plots, summary, spent, faults)
        atomic_write(sweep_dir / SUMMARY_FILE, "\n".join(summary) + "\n")
        atomic_write(path, page)
    log_summary_run(sweep_dir, fit, flop_ledger(collected), {p.name: p.path for p in plots if p.path}, wandb_mode)
    return path


def main(argv: list[str]) -> int:
    def options(parser):
        parser.add_argument(
            "--wandb-mode",
            choices=("offline", "online", "disabled"),
            help="the W&B summary run's mode (default: the sweep's wandb.mode)",
        )

    args, sweep_dir = parse_sweep_args(argv, "ladder report", "write report.html, plots and summary.txt", options)
    path = write_report(sweep_dir, wandb_mode=args.wandb_mode)
    print((sweep_dir / SUMMARY_FILE).read_text(), end="")
    print(f"-> {path}")
    return 0
