"""``ladder fit --points FILE.csv --approach A --n-col N --d-col D --loss-col L ... [--predict TARGETS.csv]``

Fits one law to the rows of a CSV file and prints the parameters (``--json`` for JSON); with
``--predict`` also the prediction at every row of a second CSV file with the same column names,
with a bootstrap interval. ``--metric-col`` fits any column instead of the loss (or, with
``--approach two_stage``, the metric read off the loss). Every approach and flag is in
``ladder fit --points FILE --help``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from launcher.analysis.fit import APPROACHES, LAWS, PREDICTING, fit_points, predict_points
from launcher.analysis.fit.chinchilla import REDUCTIONS
from launcher.analysis.fit.datacon import BASE_KEYS
from launcher.analysis.fit.laws import DEFAULT_METHOD, METHODS
from launcher.analysis.fit.twostage import LINKS
from launcher.arguments import CommandParser
from launcher.errors import UserError


def approaches_help() -> str:
    """Every approach with its one-line summary: the epilog of this help, and for the sweep parser to show."""
    width = max(len(name) for name in APPROACHES)
    lines = [
        f"  {name:<{width}}  {law.summary}" + ("" if law.predicts else " (no --predict)") for name, law in LAWS.items()
    ]
    return "approaches:\n" + "\n".join(lines)


def points_help() -> str:
    """The CSV fitter's flags and every approach: the epilog of ``ladder fit --help`` (the sweep parser), so
    that one help shows both ways of fitting."""
    p = parser()
    formatter = argparse.RawDescriptionHelpFormatter(prog=p.prog)
    formatter.start_section("with --points FILE.csv: fit one law to the rows of a CSV file")
    formatter.add_arguments([a for a in p._actions if not isinstance(a, argparse._HelpAction)])
    formatter.end_section()
    return formatter.format_help() + "\n" + approaches_help()


def parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="ladder fit",
        description="Fit a scaling law to the points of a CSV file, and predict.",
        epilog=approaches_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--points", required=True, help="CSV file with one point per row (the training set)")
    p.add_argument("--approach", required=True, choices=APPROACHES, help="the law to fit (see below)")
    p.add_argument("--n-col", required=True, help="column of parameter counts N")
    p.add_argument("--d-col", required=True, help="column of training tokens D")
    p.add_argument("--c-col", help="column of training FLOPs C (default 6·N·D)")
    p.add_argument("--loss-col", help="column of losses (needed unless --metric-col is fitted on its own)")
    p.add_argument(
        "--metric-col", help="fit this column instead of the loss; with two_stage, the metric read off the loss"
    )
    p.add_argument("--unique-col", help="datacon: column of unique tokens U (D > U repeats data)")
    p.add_argument("--weight-col", help="column of weights 1/σ²")
    p.add_argument("--budget-col", help="column naming each point's isoFLOP budget (approach 2; bootstrap strata)")
    p.add_argument(
        "--huber-reduce",
        default="sum",
        choices=REDUCTIONS,
        help="3, overtrain, datacon: sum or mean of Huber terms (same optimum)",
    )
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=METHODS,
        help="approach 3: variable projection over (α, β) (default), or the 4500-start Chinchilla grid",
    )
    p.add_argument(
        "--base",
        help="datacon: fixed base law 'E=..,A=..,B=..,alpha=..,beta=..' "
        "(default: fitted with α = β to runs with D <= U)",
    )
    p.add_argument(
        "--loss-approach",
        default="3",
        choices=[a for a in PREDICTING if a != "two_stage"],
        help="two_stage: the law for (N, D) -> loss",
    )
    p.add_argument(
        "--link",
        default="sigmoid",
        choices=LINKS,
        help="two_stage: loss -> metric, a/(1+exp(-k(L-L0)))+b or eps - k·exp(-γL)",
    )
    p.add_argument(
        "--metric-range",
        default="auto",
        help="two_stage: bounds 'LO,HI' of the metric, 'none', or 'auto' ([0, 1] when every value lies there)",
    )
    p.add_argument(
        "--predict",
        metavar="TARGETS",
        help="CSV file of rows to predict (same column names; other columns are carried through)",
    )
    p.add_argument("--n-boot", type=int, default=100, help="--predict: bootstrap refits for the interval (0: none)")
    p.add_argument("--seed", type=int, default=0, help="--predict: seed of the bootstrap resampling")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


@dataclass(frozen=True)
class Table:
    path: Path
    header: list[str]
    rows: list[tuple[int, dict]]  # (line number, row)


def read_table(path_text: str, flag: str) -> Table:
    """The rows of a CSV file, each with its line number; short or long rows are errors."""
    path = Path(path_text)
    if not path.is_file():
        raise UserError(f"{flag}: no such file: {path}")
    reader = csv.DictReader(io.StringIO(_text(path), newline=""))
    rows = []
    try:
        header = list(reader.fieldnames or [])
        for row in reader:
            extra = row.pop(None, None)  # DictReader's key for fields beyond the header
            if extra is not None or any(v is None for v in row.values()):
                given = len(header) + len(extra) if extra is not None else sum(v is not None for v in row.values())
                raise UserError(f"{path} line {reader.line_num}: {given} fields, the header has {len(header)}")
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise UserError(f"{path} line {reader.line_num}: not CSV: {exc}") from None
    if not header:
        raise UserError(f"{flag}: {path} has no header row")
    if not rows:
        raise UserError(f"{flag}: {path} has no rows")
    return Table(path, header, rows)


def _text(path: Path) -> str:
    """The file as UTF-8 text (a BOM allowed); other bytes are refused naming the line and field they are in."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line, field = before.count(b"\n") + 1, before[before.rfind(b"\n") + 1 :].count(b",") + 1
        raise UserError(
            f"{path} line {line}, field {field}: byte {data[exc.start]:#04x} is not "
            "UTF-8 text; allowed: a UTF-8 CSV file (re-save it as UTF-8)"
        ) from None


def _require(table: Table, columns: dict[str, str | None]) -> None:
    for flag, column in columns.items():
        if column is not None and column not in table.header:
            raise UserError(
                f"{flag}: no column '{column}' in {table.path}; available: {', '.join(table.header) or 'none'}"
            )


def _number(text: str, column: str, line: int, path: Path, positive: bool = True) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{path} line {line}: column '{column}' is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise UserError(f"{path} line {line}: column '{column}' is not finite: {text!r}")
    if positive and value <= 0:
        raise UserError(f"{path} line {line}: column '{column}' must be positive: {text!r}")
    return value


def _columns(args: argparse.Namespace) -> tuple[dict[str, str], str]:
    """The point keys and the CSV columns they come from, and the key predictions are reported under."""
    two_stage = args.approach == "two_stage"
    if two_stage and not (args.loss_col and args.metric_col):
        raise UserError("--approach two_stage: needs --loss-col and --metric-col")
    if not two_stage and not (args.loss_col or args.metric_col):
        raise UserError("--loss-col: required (or --metric-col to fit another column)")
    if not two_stage and args.loss_col and args.metric_col:
        raise UserError(
            "--metric-col: fits that column instead of --loss-col; give one of them "
            "(both only with --approach two_stage)"
        )
    if args.approach == "datacon" and not args.unique_col:
        raise UserError("--approach datacon: needs --unique-col (unique tokens per run)")
    columns = {"N": args.n_col, "D": args.d_col, "C": args.c_col, "U": args.unique_col}
    if two_stage:
        columns.update(loss=args.loss_col, metric=args.metric_col)
    else:
        columns["loss"] = args.loss_col or args.metric_col
    return {k: v for k, v in columns.items() if v}, "metric" if args.metric_col else "loss"


def read_points(args: argparse.Namespace) -> tuple[list[dict], list[float] | None]:
    """Points (N, D, loss, C?, U?, metric?, budget?) and weights from the columns named on the command line."""
    table = read_table(args.points, "--points")
    columns, _ = _columns(args)
    flags = {
        "--n-col": args.n_col,
        "--d-col": args.d_col,
        "--loss-col": args.loss_col,
        "--metric-col": args.metric_col,
        "--c-col": args.c_col,
        "--unique-col": args.unique_col,
        "--weight-col": args.weight_col,
        "--budget-col": args.budget_col,
    }
    _require(table, flags)
    weights: list[float] | None
    points, weights = [], [] if args.weight_col else None
    for line, row in table.rows:
        point = {
            key: _number(row[col], col, line, table.path, positive=key != "metric") for key, col in columns.items()
        }
        if args.budget_col:
            point["budget"] = row[args.budget_col]
        points.append(point)
        if weights is not None:
            weights.append(_number(row[args.weight_col], args.weight_col, line, table.path, positive=False))
    value_key = "metric" if "metric" in columns and "loss" not in columns else "loss"
    if len(points) > 1 and len({p[value_key] for p in points}) == 1:
        raise UserError(
            f"{table.path}: column '{columns[value_key]}' holds one value ({points[0][value_key]:g}) "
            "in every row; a scaling law needs values that vary"
        )
    return points, weights


def read_targets(args: argparse.Namespace, value_key: str) -> tuple[list[dict], list[dict]]:
    """Target points (N, D, C?, U?, the fitted value where given) and each row's own columns to carry."""
    table = read_table(args.predict, "--predict")
    columns, _ = _columns(args)
    inputs = {k: v for k, v in columns.items() if k in ("N", "D", "C", "U")}
    _require(
        table, {"--n-col": args.n_col, "--d-col": args.d_col, "--c-col": args.c_col, "--unique-col": args.unique_col}
    )
    fitted = columns["metric" if value_key == "metric" and "metric" in columns else "loss"]
    targets, carried = [], []
    for line, row in table.rows:
        target = {key: _number(row[col], col, line, table.path) for key, col in inputs.items()}
        given = {
            col: _number(row[col], col, line, table.path, positive=False)
            for col in columns.values()
            if col in row and row[col].strip()
        }  # the fitted ones, where given
        if fitted in given:
            target[value_key] = given[fitted]
        targets.append(target)
        carried.append({col: given.get(col, text) for col, text in row.items()})
    return targets, carried


def _base(text: str | None) -> dict | None:
    if text is None:
        return None
    base = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in BASE_KEYS:
            raise UserError(f"--base: expected {', '.join(k + '=..' for k in BASE_KEYS)}, got {part.strip()!r}")
        try:
            base[key] = float(value)
        except ValueError:
            raise UserError(f"--base: {key} is not a number: {value.strip()!r}") from None
    return base


def _metric_range(text: str):
    """'auto', None for 'none', or (lo, hi)."""
    if text in ("auto", "none"):
        return {"auto": "auto", "none": None}[text]
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--metric-range: expected 'LO,HI', 'none' or 'auto', got {text!r}") from None
    return lo, hi


def _table(result: dict) -> str:
    """Scalars as 'key  value' lines, nested parts indented, lists of records one per line."""
    lines = [f"{key:<16}{_fmt(value)}" for key, value in result.items() if not isinstance(value, (dict, list))]
    for key, value in result.items():
        scalars = {k: v for k, v in value.items() if not isinstance(v, (dict, list))} if isinstance(value, dict) else {}
        if scalars:
            lines.append(f"{key}:")
            lines += [f"  {k:<14}{_fmt(v)}" for k, v in scalars.items()]
    for i, brk in enumerate(result.get("breaks", []), start=1):
        lines.append(f"break {i}: " + "  ".join(f"{k}={_fmt(v)}" for k, v in brk.items()))
    for i, optimum in enumerate(result.get("optima", []), start=1):
        lines.append(f"optimum {i}: " + "  ".join(f"{k}={_fmt(v)}" for k, v in optimum.items()))
    if result.get("budgets"):
        lines.append(f"{'budget':>14} {'C':>11} {'points':>6} {'N_opt':>11} {'D_opt':>11} {'loss_opt':>9}")
        for b in result["budgets"]:
            lines.append(
                f"{str(b['budget']):>14} {b['C']:>11.4g} {b['n_points']:>6} {b['N_opt']:>11.4g} "
                f"{b['D_opt']:>11.4g} {b['loss_opt']:>9.4f}"
            )
    for skipped in result.get("skipped_budgets", []):
        lines.append(f"skipped budget {skipped['budget']}: {skipped['error']}")
    if result.get("predictions"):
        lines += ["", _predictions_table(result["predictions"])]
    return "\n".join(lines)


def _predictions_table(predictions: list[dict]) -> str:
    keys = list(dict.fromkeys(k for p in predictions for k in p))
    cells = [[_fmt(p.get(k, "")) for k in keys] for p in predictions]
    widths = [max(len(k), *(len(row[i]) for row in cells)) for i, k in enumerate(keys)]
    lines = ["predictions:", "  ".join(k.rjust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.n_boot < 0:
        raise UserError(f"--n-boot: must be >= 0 (0: no bootstrap), got {args.n_boot}")
    _, value_key = _columns(args)
    points, weights = read_points(args)
    options = dict(
        huber_reduce=args.huber_reduce,
        weights=weights,
        method=args.method,
        base=_base(args.base),
        loss_approach=args.loss_approach,
        link=args.link,
        metric_range=_metric_range(args.metric_range),
    )
    if args.predict:
        targets, carried = read_targets(args, value_key)
        result = predict_points(
            points,
            targets,
            args.approach,
            n_boot=args.n_boot,
            seed=args.seed,
            value_key=value_key,
            carry=carried,
            **options,
        )
    else:
        result = fit_points(points, args.approach, **options)
    if args.metric_col:
        result = {"metric_col": args.metric_col, **result}
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0
