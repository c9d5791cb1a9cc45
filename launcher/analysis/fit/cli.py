"""``ladder fit --points FILE.csv --approach {1,2,3,kaplan,bnsl} --n-col N --d-col D --loss-col L ...``

Fits one law to the rows of a CSV file and prints the parameters (``--json`` for JSON).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from launcher.errors import UserError
from launcher.analysis.fit import APPROACHES, fit_points
from launcher.analysis.fit.chinchilla import REDUCTIONS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UserError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ladder fit", description="Fit a scaling law to the points of a CSV file.")
    p.add_argument("--points", required=True, help="CSV file with one point per row")
    p.add_argument("--approach", required=True, choices=APPROACHES)
    p.add_argument("--n-col", required=True, help="column of parameter counts N")
    p.add_argument("--d-col", required=True, help="column of training tokens D")
    p.add_argument("--c-col", help="column of training FLOPs C (default 6·N·D)")
    p.add_argument("--loss-col", required=True, help="column of losses")
    p.add_argument("--huber-reduce", default="sum", choices=REDUCTIONS, help="approach 3: sum or mean of Huber terms")
    p.add_argument("--weight-col", help="column of weights 1/σ²")
    p.add_argument("--budget-col", help="column naming each point's isoFLOP budget (approach 2)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _number(text: str, column: str, line: int, path: Path) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{path} line {line}: column '{column}' is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise UserError(f"{path} line {line}: column '{column}' is not finite: {text!r}")
    return value


def read_points(args: argparse.Namespace) -> tuple[list[dict], list[float] | None]:
    """Points (N, D, loss, C?, budget?) and weights from the CSV columns named on the command line."""
    path = Path(args.points)
    if not path.is_file():
        raise UserError(f"--points: no such file: {path}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        wanted = {"--n-col": args.n_col, "--d-col": args.d_col, "--loss-col": args.loss_col,
                  "--c-col": args.c_col, "--weight-col": args.weight_col, "--budget-col": args.budget_col}
        for flag, column in wanted.items():
            if column is not None and column not in header:
                raise UserError(f"{flag}: no column '{column}' in {path}; available: {', '.join(header) or 'none'}")
        numeric = {"N": args.n_col, "D": args.d_col, "loss": args.loss_col, "C": args.c_col}
        points, weights = [], [] if args.weight_col else None
        for line, row in enumerate(reader, start=2):
            point = {key: _number(row[col], col, line, path) for key, col in numeric.items() if col}
            if args.budget_col:
                point["budget"] = row[args.budget_col]
            points.append(point)
            if weights is not None:
                weights.append(_number(row[args.weight_col], args.weight_col, line, path))
    if not points:
        raise UserError(f"--points: {path} has no rows")
    return points, weights


def _table(result: dict) -> str:
    """Scalars as 'key  value' lines, nested parts indented, approach 2's optima as a table."""
    lines = [f"{key:<16}{_fmt(value)}" for key, value in result.items() if not isinstance(value, (dict, list))]
    for key, value in result.items():
        scalars = {k: v for k, v in value.items() if not isinstance(v, (dict, list))} if isinstance(value, dict) else {}
        if scalars:
            lines.append(f"{key}:")
            lines += [f"  {k:<14}{_fmt(v)}" for k, v in scalars.items()]
    for i, brk in enumerate(result.get("breaks", []), start=1):
        lines.append(f"break {i}: " + "  ".join(f"{k}={_fmt(v)}" for k, v in brk.items()))
    if result.get("budgets"):
        lines.append(f"{'budget':>14} {'C':>11} {'points':>6} {'N_opt':>11} {'D_opt':>11} {'loss_opt':>9}")
        for b in result["budgets"]:
            lines.append(f"{str(b['budget']):>14} {b['C']:>11.4g} {b['n_points']:>6} {b['N_opt']:>11.4g} "
                         f"{b['D_opt']:>11.4g} {b['loss_opt']:>9.4f}")
    for skipped in result.get("skipped_budgets", []):
        lines.append(f"skipped budget {skipped['budget']}: {skipped['error']}")
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    points, weights = read_points(args)
    result = fit_points(points, args.approach, huber_reduce=args.huber_reduce, weights=weights)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0
