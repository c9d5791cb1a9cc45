"""Collect: every run's ``metrics.jsonl`` becomes one table of curves and the points the fitters take.

``metrics.jsonl`` is the source of truth (compute nodes are often offline; W&B only mirrors it). Each
run's size and plan (N, N_non_embedding, D, C, budget, family) come from the job database, else from
``plan.json``, else from the run's own ``config.yaml``; its state from the database, unless the run's
``state.json`` already reports an end the database has not folded in yet.

A sweep of thousands of runs must be collected in seconds, so files are first read by a fast path. For
``curves.parquet`` (``CURVE_COLUMNS``: a row per logged step with N, D, C, a column per metric) files are read
in chunks of about 16 MB into one buffer each, and pyarrow's JSON reader (C++, without the GIL, so chunks
parse on threads) parses a chunk in one call; a chunk it refuses (a bad line somewhere) is halved until
the files that stop it are alone. The former ``curves.csv``, assembled from the files' own number text,
stays as ``collect_sweep(curves="csv")`` for the benchmark's baseline: there numpy finds the keys and
values of a file at once (quotes, colons, line ends), in worker processes when there are many. Any file a
fast path cannot prove well-formed is read again line by line with ``json.loads``, which finds and reports
the bad lines, so a bad line is dropped and counted on its own, never with its neighbours.

Nothing a run left behind makes collection fail: a missing, empty or unreadable file skips the run
(``Collected.skipped``); bad lines (cut, not JSON, missing keys) are dropped with a warning; a run that
diverged (state diverged, or a non-finite loss) stays in the table and out of the fits.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np

from launcher.arguments import CommandParser, command_parser
from launcher.errors import UserError
from launcher.files import atomic_path
from launcher.policy import FINAL
from launcher.run.metrics import METRICS_FILE, RESUME_NEEDLE, latest_attempt, resume_step
from launcher.run.state import read_state
from launcher.sweep.jobdb import JobDB
from launcher.sweep.plan import read_plan

CURVES_FILE = "curves.parquet"
CSV_FILE = "curves.csv"  # the former format: ``collect_sweep(..., curves="csv")``, kept as the benchmark's baseline
CURVE_COLUMNS = (
    "run",
    "family",
    "N",
    "N_non_embedding",
    "budget",
    "diverged",
    "step",
    "D",
    "C",
    "train_loss",
    "val_loss",
)  # of curves.parquet: one row per logged step, one column per metric, N, D, C per row
REQUIRED_KEYS = ("step", "tokens", "train_loss")  # a line without one of these is dropped
CSV_HEADER = "run,family,N,N_non_embedding,budget,diverged,step,D,C,train_loss,val_loss"
# The final loss is the last val_loss if it was measured in the last STALE_VAL_FRACTION of the steps;
# otherwise the mean of the last train losses (FALLBACK_TRAIN_POINTS of them at most) stands in for it.
STALE_VAL_FRACTION = 0.1
FALLBACK_TRAIN_POINTS = 20
PARALLEL_MIN_RUNS = 64  # below this, starting worker processes costs more than it saves
_FAST_KEYS = ("step", "tokens", "flops", "train_loss")  # the fast path needs each on every line
_NOT_STARTED = frozenset({"planned", "queued", "cancelled"})


# ------------------------------------------------------------------------------------------ run facts


@dataclasses.dataclass
class RunMeta:
    """What the plan says of a run, and where it stands."""

    name: str
    family: str
    N: int
    N_non_embedding: int
    D: int  # planned tokens
    C: float  # planned training FLOPs (exact accounting)
    budget: Optional[float]
    run_dir: Path
    state: str
    source: str  # jobdb | plan.json | config.yaml
    holdout: bool = False  # plan.json marks it (sweep.holdout): predicted by the fit, not fitted
    role: str = "run"  # run | trunk (a WSD sweep's constant-LR stem: no point) | branch (its cooldown to D) |
    #                    target (the projected run: checked against the projection, never fitted)

    @property
    def flops_per_token(self) -> float:
        return self.C / self.D


def _effective_state(recorded: Optional[str], run_dir: Path) -> str:
    """The database's state, unless the run's own state.json reports an end not folded in yet."""
    state = read_state(run_dir, warn=True)
    reported = state.state if state else None
    if reported in FINAL and recorded not in FINAL:
        return reported
    return recorded or reported or "unknown"


def _meta_from_config(run_dir: Path) -> RunMeta:
    """A run the database and plan.json do not know: its counts from its own resolved config."""
    import yaml

    from models.family import family, model_config  # torch: only for runs neither record knows

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    entry, cfg = family(config["model"].get("family")), model_config(config["model"])
    n_total, n_ne = entry.param_counts(cfg)
    train = config["train"]
    tokens = int(train["tokens"] or train["max_steps"] * train["global_batch_tokens"])
    role = "branch" if train.get("init_from") else "trunk" if train.get("schedule") == "constant" else "run"
    return RunMeta(
        run_dir.name,
        entry.name,
        n_total,
        n_ne,
        tokens,
        float(entry.flops_per_token(cfg)) * tokens,
        None,
        run_dir,
        "unknown",
        "config.yaml",
        role=role,
    )


def run_metas(sweep_dir: Path) -> tuple[list[RunMeta], list[tuple[str, str]]]:
    """Every run of the sweep (database, then plan.json, then run directories), and those left out, why."""
    metas: dict[str, RunMeta] = {}
    skipped: list[tuple[str, str]] = []
    runs_root = sweep_dir / "runs"

    def where(name: str, recorded: Optional[str]) -> Path:
        local = runs_root / name  # a sweep directory copied off the cluster keeps its runs here
        return local if local.is_dir() or not recorded else Path(recorded)

    planned = read_plan(sweep_dir).get("runs", [])
    held = {r["name"] for r in planned if r.get("holdout")}
    db_path = sweep_dir / "jobdb.sqlite"
    if db_path.exists():
        with JobDB(db_path) as db:
            for r in db.runs():
                run_dir = where(r.name, r.run_dir)
                metas[r.name] = RunMeta(
                    r.name,
                    r.family,
                    r.N,
                    r.N_non_embedding,
                    r.D,
                    float(r.C),
                    r.budget,
                    run_dir,
                    _effective_state(r.state, run_dir),
                    "jobdb",
                    r.name in held,
                    r.role,
                )
    for r in planned:
        if r.get("name") in metas:
            continue
        run_dir = where(r["name"], None)
        metas[r["name"]] = RunMeta(
            r["name"],
            r["family"],
            int(r["N"]),
            int(r["N_non_embedding"]),
            int(r["D"]),
            float(r["C"]),
            r.get("budget"),
            run_dir,
            _effective_state(None, run_dir),
            "plan.json",
            r["name"] in held,
            r.get("role", "run"),
        )
    if runs_root.is_dir():
        for run_dir in sorted(p for p in runs_root.iterdir() if p.is_dir() and p.name not in metas):
            try:
                meta = _meta_from_config(run_dir)
            except FileNotFoundError:
                skipped.append((run_dir.name, "not in the job database or plan.json, and no config.yaml"))
                continue
            except Exception as exc:  # noqa: BLE001 - one unreadable config must not stop the collection
                skipped.append((run_dir.name, f"config.yaml unreadable: {type(exc).__name__}: {exc}"))
                continue
            meta.state = _effective_state(None, run_dir)
            metas[meta.name] = meta
    return list(metas.values()), skipped


# ---------------------------------------------------------------------------------------- one file


@dataclasses.dataclass
class Curve:
    """One run's logged points after resume de-duplication, in step order."""

    step: np.ndarray
    D: np.ndarray  # tokens so far
    C: np.ndarray  # training FLOPs so far
    train_loss: np.ndarray
    val_loss: np.ndarray  # NaN where the step had no validation

    def __len__(self) -> int:
        return len(self.step)

    def thinned(self, limit: int) -> np.ndarray:
        """Indices of at most ~``limit`` points, log-spaced in step (dense early, where the curve bends) and
        always with the last point."""
        n = len(self)
        if n <= limit:
            return np.arange(n)
        return np.unique(np.r_[np.round(np.geomspace(1, n, limit)).astype(int) - 1, n - 1])


@dataclasses.dataclass
class _Parsed:
    """What a worker sends back for one file."""

    curve: Optional[Curve] = None
    csv: bytes = b""
    issues: list[str] = dataclasses.field(default_factory=list)
    error: Optional[str] = None  # the run is skipped
    nonfinite_step: Optional[int] = None  # the first step with a non-finite train or val loss
    last: Optional[dict] = None  # the file's last record, all its keys


class _Columns(NamedTuple):
    """A file's records in file order: the numbers, and the same values as rows of text for curves.csv."""

    numbers: np.ndarray  # [4, n]: step, tokens, flops (NaN: not logged), train_loss
    rows: bytes  # "step,tokens,flops,train_loss,val_loss\n" per record, the file's own number text
    val: np.ndarray  # [n], NaN where not logged
    val_logged: np.ndarray  # [n] bool
    resumes: list[tuple[int, int]]  # (index of the record after it, step) of each resume marker


_QUOTE, _COLON, _COMMA, _NEWLINE, _SPACE = (ord(c) for c in '":,\n ')
_OPEN, _CLOSE = ord("{"), ord("}")


def _key_spans(
    buf: np.ndarray, key_start: np.ndarray, key_len: np.ndarray, key: bytes, quotes: np.ndarray, line_ends: np.ndarray
) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(value start, value end) of every occurrence of ``key``, in file order; None if a value is not followed
    by a comma or by the line's closing brace. ``quotes`` ends with a sentinel past the buffer."""
    hit = np.flatnonzero(key_len == len(key))
    for j, char in enumerate(key):
        hit = hit[buf[key_start[hit] + j] == char]
    start = key_start[hit] + len(key) + 2  # past the closing quote and the colon
    start += buf[start] == _SPACE  # json.dumps' default ": "
    # a value ends where the next key's quote starts (less ", " or ","), or at its line's closing brace
    line_end = line_ends[np.searchsorted(line_ends, start)]
    end = np.minimum(quotes[np.searchsorted(quotes, start)], line_end) - 1
    end -= buf[end] == _SPACE
    after = buf[end]
    if (end <= start).any() or not ((after == _COMMA) | (after == _CLOSE)).all():
        return None
    return start, end


def _gather_rows(buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> bytes:
    """Rows of comma-separated fields: field [i, j] is buf[start[i, j] : start[i, j] + length[i, j]]."""
    width = (length + 1).ravel()  # each field and the separator after it
    out_start = np.cumsum(width) - width
    index = np.arange(int(width.sum())) + np.repeat(start.ravel() - out_start, width)
    out = buf[index]
    separators = out_start + width - 1
    out[separators] = _COMMA
    out[separators[start.shape[1] - 1 :: start.shape[1]]] = _NEWLINE
    return out.tobytes()


def _without_resumes(data: bytes) -> Optional[tuple[bytes, list[tuple[int, int]]]]:
    """The file less its resume markers, and where they were (``latest_attempt``'s resumes); None when a line
    that names the marker key is not a marker (the careful path then reads the file)."""
    if RESUME_NEEDLE not in data:
        return data, []
    lines = data.split(b"\n")
    kept: list[bytes] = []
    resumes: list[tuple[int, int]] = []
    for line in lines:
        if RESUME_NEEDLE in line:
            try:
                step = resume_step(json.loads(line))
            except ValueError:
                return None
            if step is None:
                return None
            resumes.append((len(kept), step))
        else:
            kept.append(line)
    return b"\n".join(kept), resumes


def _fast_columns(data: bytes) -> Optional[_Columns]:
    """The columns of a file of flat JSON objects, one per line, each holding every fast key once as a number
    (resume markers aside), found by vectorised scanning; None when the file is anything else (the careful
    path then reads it)."""
    if not data.endswith(b"\n"):
        return None
    stripped = _without_resumes(data)
    if stripped is None:
        return None
    data, resumes = stripped
    if not data:
        return None
    buf = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(buf == _NEWLINE)
    n = len(ends)
    starts = np.concatenate(([0], ends[:-1] + 1))
    if (buf[starts] != _OPEN).any() or (buf[ends - 1] != _CLOSE).any() or b"\\" in data:
        return None
    quotes = np.flatnonzero(buf == _QUOTE)  # without escapes, strings are the quote pairs
    if len(quotes) % 2:
        return None
    opening, closing = quotes[0::2], quotes[1::2]
    quotes = np.append(quotes, len(buf))
    is_key = buf[closing + 1] == _COLON
    key_start, key_len = opening[is_key] + 1, (closing - opening - 1)[is_key]
    field_start = np.zeros((n, 5), dtype=np.int64)
    field_len = np.zeros((n, 5), dtype=np.int64)
    every_line = np.arange(n)
    for j, key in enumerate((*_FAST_KEYS, "val_loss")):
        spans = _key_spans(buf, key_start, key_len, key.encode(), quotes, ends)
        if spans is None:
            return None
        start, end = spans
        lines = np.searchsorted(ends, start)
        if key == "val_loss":
            if len(np.unique(lines)) != len(lines):
                return None
        elif not np.array_equal(lines, every_line):
            return None
        field_start[lines, j], field_len[lines, j] = start, end - start
    rows = _gather_rows(buf, field_start, field_len)
    val_lines, val_start, val_end = lines, start, end  # the loop's last key
    val, val_logged = np.full(n, np.nan), np.zeros(n, dtype=bool)
    val_logged[val_lines] = True
    number = (val_end - val_start != 4) | (buf[val_start] != ord("n"))  # the runtime writes non-finite as null
    try:
        numbers = np.loadtxt(
            rows.splitlines(), delimiter=",", usecols=(0, 1, 2, 3), dtype=np.float64, comments=None, ndmin=2
        ).T
        val[val_lines[number]] = np.array(
            [data[a:b] for a, b in zip(val_start[number].tolist(), val_end[number].tolist())], dtype=bytes
        ).astype(np.float64)
    except ValueError:
        return None
    if not np.array_equal(numbers[0], np.round(numbers[0])):
        return None
    return _Columns(numbers, rows, val, val_logged, resumes)


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError
    return float(value)


def _careful_columns(data: bytes, issues: list[str]) -> Optional[_Columns]:
    """Line by line with json.loads; bad lines are dropped and reported in ``issues``."""
    rows: list[tuple[float, float, float, float, float, bool]] = []
    texts: list[str] = []
    bad: list[str] = []
    resumes: list[tuple[int, int]] = []
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            cut = number == len(lines) and not data.endswith(b"\n")
            bad.append(f"line {number}: " + ("cut mid-record (last line)" if cut else "not JSON"))
            continue
        if not isinstance(record, dict):
            bad.append(f"line {number}: not a JSON object")
            continue
        if (resumed := resume_step(record)) is not None:
            resumes.append((len(rows), resumed))
            continue
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            bad.append(f"line {number}: missing {', '.join(missing)}")
            continue
        try:  # the runtime writes a non-finite loss as null: NaN here, so that the run counts as diverged
            step, tokens = _number(record["step"]), _number(record["tokens"])
            flops, loss, val = (
                math.nan if record.get(k) is None else _number(record[k]) for k in ("flops", "train_loss", "val_loss")
            )
        except TypeError:
            bad.append(f"line {number}: step, tokens, flops, train_loss or val_loss is not a number")
            continue
        if not step.is_integer():
            bad.append(f"line {number}: step {record['step']!r} is not an integer")
            continue
        rows.append((step, tokens, flops, loss, val, "val_loss" in record))
        texts.append(
            ",".join(
                [json.dumps(record[k]) for k in ("step", "tokens")]
                + [
                    "" if record.get("flops") is None else json.dumps(record["flops"]),
                    json.dumps(record["train_loss"]),
                    json.dumps(record["val_loss"]) if "val_loss" in record else "",
                ]
            )
        )
    if bad:
        shown = "; ".join(bad[:3]) + (f"; ... ({len(bad) - 3} more)" if len(bad) > 3 else "")
        issues.append(f"{len(bad)} bad line(s) dropped: {shown}")
    if not rows:
        return None
    numbers = np.array([r[:4] for r in rows], dtype=np.float64).T
    return _Columns(
        numbers,
        ("\n".join(texts) + "\n").encode(),
        np.array([r[4] for r in rows]),
        np.array([r[5] for r in rows], dtype=bool),
        resumes,
    )


def parse_metrics(
    path: Path, prefix: Optional[bytes] = None, flops_per_token: float = math.nan, state_diverged: bool = False
) -> _Parsed:
    """Read one metrics.jsonl into a Curve, and into its ``curves.csv`` rows when given a ``prefix`` (which
    starts every row)."""
    out = _Parsed()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        out.error = f"no {METRICS_FILE}"
        return out
    except OSError as exc:
        out.error = f"{METRICS_FILE} unreadable: {exc.strerror or exc}"
        return out
    if not data.strip():
        out.error = f"{METRICS_FILE} is empty"
        return out
    return _finish(
        out, data, _fast_columns(data) or _careful_columns(data, out.issues), prefix, flops_per_token, state_diverged
    )


# ------------------------------------------------------------------------------------------ many files

BULK_CHUNK_BYTES = 16 << 20  # files read into one buffer and parsed by one pyarrow.json call, a chunk per thread


def _bulk_schema():
    import pyarrow as pa

    return pa.schema(
        [("step", pa.int64()), *((k, pa.float64()) for k in ("tokens", "flops", "train_loss", "val_loss"))]
    )


# a logged but non-finite val_loss (null), which a parse cannot tell from a val_loss not logged
_NULL_VAL_LOSS = re.compile(rb'"val_loss"\s*:\s*null')


def _bulk_columns(buf: np.ndarray, bounds: list[tuple[int, int]], schema) -> Optional[list[Optional[_Columns]]]:
    """The columns of each file ``buf[a:b]`` from one pyarrow.json parse of ``buf``; None for a file pyarrow
    cannot vouch for (a null or missing step, tokens or train_loss, or a null val_loss, which a parse cannot
    tell from one not logged: those are read line by line). None for all when the parse fails or when some
    line of some file is not exactly one object (then a bad line lies somewhere)."""
    import pyarrow as pa
    import pyarrow.json as pj

    ends = np.flatnonzero(buf == _NEWLINE)
    file_ends = np.array([b for _, b in bounds])
    # every line of every file starts with "{" and ends with "}\n": each gives one row or a parse error
    starts = np.r_[0, ends[:-1] + 1]
    if not len(ends) or ends[-1] != len(buf) - 1 or (buf[starts] != _OPEN).any() or (buf[ends - 1] != _CLOSE).any():
        return None
    if (buf[file_ends - 1] != _NEWLINE).any():  # every file ends its last line
        return None
    try:
        table = pj.read_json(
            pa.py_buffer(buf),
            read_options=pj.ReadOptions(use_threads=False),
            parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowException, ValueError):  # not JSON, a value of another type, a line over the block size
        return None
    if table.num_rows != len(ends):
        return None
    step, tokens, flops, loss, val = (table.column(k) for k in schema.names)
    unusable = np.zeros(len(ends), dtype=bool)
    for column in (step, tokens, loss):
        if column.null_count:
            unusable |= column.is_null().to_numpy(zero_copy_only=False)
    numbers = np.stack([c.to_numpy() for c in (step, tokens, flops, loss)]).astype(np.float64)
    val = val.to_numpy()
    row_ends = np.searchsorted(ends, file_ends - 1) + 1
    out: list[Optional[_Columns]] = []
    null_val = _NULL_VAL_LOSS.search(buf.data) is not None  # one search of the chunk, files only if found
    for (a, b), r0, r1 in zip(bounds, np.r_[0, row_ends[:-1]].tolist(), row_ends.tolist()):
        trusted = not unusable[r0:r1].any() and not (null_val and _NULL_VAL_LOSS.search(buf[a:b].data))
        # a resume marker has no step, so a file holding one is not trusted: parse_metrics reads its resumes
        out.append(_Columns(numbers[:, r0:r1], b"", val[r0:r1], ~np.isnan(val[r0:r1]), []) if trusted else None)
    return out


def _bulk_task(tasks: list[tuple], schema) -> list[_Parsed]:
    """A chunk of files read into one buffer and parsed at once (``_bulk_columns``); a chunk pyarrow refuses is
    halved until the files that stop it are alone, and those (and any file it cannot vouch for, or that changed
    size while read) are read as ``parse_metrics`` reads them."""
    sizes = []
    for path, *_ in tasks:
        try:
            sizes.append(path.stat().st_size)
        except OSError:
            sizes.append(0)  # parse_metrics says why
    offsets = np.r_[0, np.cumsum(sizes)].tolist()
    whole = bytearray(offsets[-1])
    view = memoryview(whole)
    readable = []
    for i, (path, *_) in enumerate(tasks):
        try:
            with open(path, "rb") as handle:
                if sizes[i] and handle.readinto(view[offsets[i] : offsets[i + 1]]) == sizes[i]:
                    readable.append(i)
        except OSError:
            pass
    buf = np.frombuffer(whole, np.uint8)
    results: list[Optional[_Parsed]] = [None] * len(tasks)

    def parse(index: list[int]) -> None:
        if not index:
            return
        contiguous = index == list(range(index[0], index[-1] + 1))
        part = (
            buf[offsets[index[0]] : offsets[index[-1] + 1]]
            if contiguous
            else np.concatenate([buf[offsets[i] : offsets[i + 1]] for i in index])
        )
        at = np.r_[0, np.cumsum([sizes[i] for i in index])].tolist()
        columns = _bulk_columns(part, list(zip(at[:-1], at[1:])), schema)
        if columns is None and len(index) > 1:
            parse(index[: len(index) // 2])
            parse(index[len(index) // 2 :])
            return
        for i, c, a, b in zip(index, columns or [None] * len(index), at[:-1], at[1:]):
            if c is not None:
                results[i] = _finish(_Parsed(), part[a:b].tobytes(), c, None, tasks[i][2], tasks[i][3])

    parse(readable)
    return [r if r is not None else parse_metrics(*t) for r, t in zip(results, tasks)]


def _bulk_parsed(tasks: list[tuple], workers: Optional[int]) -> Iterator[_Parsed]:
    """Every file of ``tasks`` (path, None, flops per token, diverged), in order, parsed by pyarrow in chunks of
    about BULK_CHUNK_BYTES on threads (pyarrow parses without the GIL), each chunk as soon as it is done."""
    from concurrent.futures import ThreadPoolExecutor

    schema = _bulk_schema()
    chunks: list[list[tuple]] = [[]]
    size = 0
    for task in tasks:
        try:
            size += task[0].stat().st_size
        except OSError:
            pass
        chunks[-1].append(task)
        if size >= BULK_CHUNK_BYTES:
            chunks.append([])
            size = 0
    threads = max(1, min(len(chunks), workers or len(os.sched_getaffinity(0))))
    with ThreadPoolExecutor(threads) as pool:
        for parsed in pool.map(lambda chunk: _bulk_task(chunk, schema), chunks):
            yield from parsed


def _finish(
    out: _Parsed,
    data: bytes,
    columns: Optional[_Columns],
    prefix: Optional[bytes],
    flops_per_token: float,
    state_diverged: bool,
) -> _Parsed:
    """A file's columns, however parsed, into its Curve (the latest attempt's records; C from the plan's FLOPs
    per token where flops was not logged), and its ``curves.csv`` rows when given a ``prefix``."""
    if columns is None:
        out.error = f"{METRICS_FILE} has no valid record" + (f" ({out.issues[0]})" if out.issues else "")
        return out
    step = columns.numbers[0].astype(np.int64)
    keep, backwards = latest_attempt(step, columns.resumes)
    rows = columns.rows
    if backwards:
        out.issues.append(f"{backwards} record(s) whose step went back with no resume marker: skipped")
    if len(keep) < len(step) - backwards:
        out.issues.append(
            f"{len(step) - backwards - len(keep)} record(s) repeated by a resume: kept the latest attempt's"
        )
    if len(keep) < len(step):
        if prefix is not None:
            lines = rows.split(b"\n")
            rows = b"".join(lines[i] + b"\n" for i in keep.tolist())
    tokens, flops, loss = (columns.numbers[k][keep] for k in (1, 2, 3))
    val, val_logged = columns.val[keep], columns.val_logged[keep]
    missing_flops = np.isnan(flops)
    if missing_flops.any():
        flops = np.where(missing_flops, tokens * flops_per_token, flops)
        if prefix is not None:
            fields = [line.split(b",") for line in rows.splitlines()]
            for f, c in zip(fields, flops.tolist()):
                f[2] = f[2] or json.dumps(c).encode()
            rows = b"".join(b",".join(f) + b"\n" for f in fields)
        out.issues.append(
            f"{int(missing_flops.sum())} record(s) without flops: C = tokens x the plan's FLOPs per token"
        )
    out.curve = Curve(step[keep], tokens, flops, loss, val)
    bad = ~np.isfinite(loss) | (val_logged & ~np.isfinite(val))
    out.nonfinite_step = int(out.curve.step[np.argmax(bad)]) if bad.any() else None
    if prefix is not None:
        lead = prefix + (b"1," if state_diverged or bad.any() else b"0,")
        out.csv = lead + rows[:-1].replace(b"\n", b"\n" + lead) + b"\n"
    out.last = _last_record(data)
    return out


def _last_record(data: bytes) -> Optional[dict]:
    """The last line that parses as a JSON object (the end-of-run keys: throughput and the like)."""
    tail = data[data.rfind(b"\n", 0, max(0, len(data) - 4096)) + 1 :]  # the last lines
    for line in reversed(tail.rstrip(b"\n").split(b"\n")):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and resume_step(record) is None:
            return record
    return None


def final_metric(path: Path, key: str) -> Optional[tuple[float, int]]:
    """The last finite value of ``key`` a run logged in its metrics.jsonl, and its step; None if it never did.

    Any key a run writes (``zero_shot_acc``, a user's own eval) is found this way, from the end of the
    file, so a key logged at every validation costs a few lines' parse, not the whole file's.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return None
    needle, end = json.dumps(key).encode() + b":", len(data)
    while (at := data.rfind(needle, 0, end)) >= 0:
        start = data.rfind(b"\n", 0, at) + 1
        stop = data.find(b"\n", at)
        end = start
        try:
            record = json.loads(data[start : None if stop < 0 else stop])
            value = _number(record[key])
        except (ValueError, TypeError, KeyError):
            continue
        if math.isfinite(value):
            return value, int(record.get("step", -1))
    return None


def _parse_task(task: tuple) -> _Parsed:
    return parse_metrics(*task)


# -------------------------------------------------------------------------------------------- sweep


@dataclasses.dataclass
class CollectedRun:
    """A run's plan, state and what its curve says about its end."""

    meta: RunMeta
    points: int = 0
    D: Optional[float] = None  # tokens reached
    C: Optional[float] = None  # FLOPs reached
    loss: Optional[float] = None  # final loss (see loss_source)
    loss_source: Optional[str] = None
    diverged: bool = False
    tokens_per_s: Optional[float] = None  # throughput of the last logged step

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def state(self) -> str:
        return self.meta.state

    def to_json(self) -> dict:
        meta = dataclasses.asdict(self.meta)
        meta["run_dir"] = str(meta["run_dir"])
        return {
            **meta,
            "D_planned": meta.pop("D"),
            "C_planned": meta.pop("C"),
            "points": self.points,
            "D": self.D,
            "C": self.C,
            "loss": self.loss,
            "loss_source": self.loss_source,
            "diverged": self.diverged,
            "tokens_per_s": self.tokens_per_s,
        }


CURVE_POINT_DTYPE = np.dtype(
    [("name", object), ("N", np.float64), ("D", np.float64), ("C", np.float64), ("loss", np.float64)]
)


@dataclasses.dataclass
class Collected:
    """A sweep's runs, their curves, the points for the fitters, and what was left out and why."""

    sweep_dir: Path
    runs: list[CollectedRun]
    curves: dict[str, Curve]
    final_points: list[dict]
    skipped: list[tuple[str, str]]
    warnings: list[str]
    curves_path: Optional[Path]  # curves.parquet (or curves.csv); None when not written

    @property
    def in_fit(self) -> list[CollectedRun]:
        """Runs whose curves the fitters see: every collected run that did not diverge, but the target run."""
        return [r for r in self.runs if r.name in self.curves and not r.diverged and r.meta.role != "target"]

    def curve_indices(self, run: CollectedRun, limit: Optional[int] = None) -> np.ndarray:
        """Indices of the logged points of ``run`` approach 1 reads (at most ~``limit``, see ``Curve.thinned``):
        a WSD branch's cooldown end only, none of a constant-LR trunk (a point inside a decay or on a trunk
        is not a finished run of that length), the points of any other run."""
        n = len(self.curves[run.name])
        if run.meta.role in ("trunk", "branch"):
            return np.arange(n - 1, n) if run.meta.role == "branch" else np.arange(0)
        return self.curves[run.name].thinned(limit) if limit else np.arange(n)

    @property
    def curve_points(self) -> np.ndarray:
        """The logged points (name, N, D, C, loss = train_loss) approach 1 reads, as a structured array."""
        parts = [(r, self.curve_indices(r)) for r in self.in_fit]
        out = np.empty(sum(len(i) for _, i in parts), dtype=CURVE_POINT_DTYPE)
        at = 0
        for r, index in parts:
            curve = self.curves[r.name]
            part = out[at : at + len(index)]
            part["name"], part["N"] = r.name, r.meta.N
            part["D"], part["C"], part["loss"] = curve.D[index], curve.C[index], curve.train_loss[index]
            at += len(index)
        return out

    def to_json(self) -> dict:
        return {
            "sweep_dir": str(self.sweep_dir),
            "runs": [r.to_json() for r in self.runs],
            "final_points": self.final_points,
            "curve_points": len(self.curve_points),
            "skipped": [{"run": n, "reason": why} for n, why in self.skipped],
            "warnings": self.warnings,
            "curves_file": None if self.curves_path is None else str(self.curves_path),
        }


def _csv_prefix(meta: RunMeta) -> bytes:
    budget = "" if meta.budget is None else repr(float(meta.budget))
    name = meta.name if not any(c in meta.name for c in ',"\n') else '"' + meta.name.replace('"', '""') + '"'
    return f"{name},{meta.family},{meta.N},{meta.N_non_embedding},{budget},".encode()


def _final_loss(curve: Curve) -> tuple[float, str]:
    """The final val_loss if it is recent, else the mean of the last train losses; and which it was."""
    has_val = np.flatnonzero(~np.isnan(curve.val_loss))
    last_step = int(curve.step[-1])
    if len(has_val):
        i = has_val[-1]
        if last_step - int(curve.step[i]) <= STALE_VAL_FRACTION * last_step:
            return float(curve.val_loss[i]), "val_loss" if i == len(curve) - 1 else f"val_loss@step{curve.step[i]}"
    k = max(1, min(FALLBACK_TRAIN_POINTS, len(curve) // 10))
    return float(np.mean(curve.train_loss[-k:])), f"mean of last {k} train_loss"


def _workers(n_tasks: int, workers: Optional[int]) -> int:
    if workers is not None:
        return max(1, workers)
    if n_tasks < PARALLEL_MIN_RUNS:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def curves_table(runs: list[CollectedRun], curves: dict[str, Curve]):
    """Every logged point of ``runs`` as a pyarrow Table of CURVE_COLUMNS (run and family dictionary-encoded)."""
    import pyarrow as pa

    lengths = np.array([len(curves[r.name]) for r in runs], dtype=np.int64)
    index = pa.array(np.repeat(np.arange(len(runs), dtype=np.int32), lengths))
    families = sorted({r.meta.family for r in runs})
    family_index = np.array([families.index(r.meta.family) for r in runs], dtype=np.int32)

    def per_run(values, dtype) -> np.ndarray:
        return np.repeat(np.array(values, dtype=dtype), lengths)

    def stacked(field: str) -> np.ndarray:
        parts = [getattr(curves[r.name], field) for r in runs]
        return np.concatenate(parts) if parts else np.empty(0)

    budget = per_run([math.nan if r.meta.budget is None else r.meta.budget for r in runs], np.float64)
    val = stacked("val_loss")
    columns = {
        "run": pa.DictionaryArray.from_arrays(index, pa.array([r.name for r in runs], pa.string())),
        "family": pa.DictionaryArray.from_arrays(
            pa.array(np.repeat(family_index, lengths)), pa.array(families, pa.string())
        ),
        "N": per_run([r.meta.N for r in runs], np.int64),
        "N_non_embedding": per_run([r.meta.N_non_embedding for r in runs], np.int64),
        "budget": pa.array(budget, mask=np.isnan(budget)),
        "diverged": per_run([r.diverged for r in runs], bool),
        "step": stacked("step").astype(np.int64),
        "D": stacked("D"),
        "C": stacked("C"),
        "train_loss": stacked("train_loss"),
        "val_loss": pa.array(val, mask=np.isnan(val)),  # null where the step had no validation
    }
    return pa.table(columns)


ROW_GROUP_POINTS = 1 << 20


class _CurvesSink:
    """curves.parquet (zstd-compressed columns) written as the runs arrive, a row group per ~1M points, so that
    writing overlaps the parsing of later files."""

    def __init__(self, path: Path):
        self.path = path
        self.writer: Any = None  # a pyarrow.parquet.ParquetWriter once the first table is written
        self.runs: list[CollectedRun] = []
        self.curves: dict[str, Curve] = {}
        self.points = 0

    def add(self, run: CollectedRun, curve: Curve) -> None:
        self.runs.append(run)
        self.curves[run.name] = curve
        self.points += len(curve)
        if self.points >= ROW_GROUP_POINTS:
            self.flush()

    def flush(self) -> None:
        import pyarrow.parquet as pq

        if self.runs or self.writer is None:  # an empty sweep still gets its (empty) table
            table = curves_table(self.runs, self.curves)
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
            self.writer.write_table(table, row_group_size=ROW_GROUP_POINTS)
        self.runs, self.curves, self.points = [], {}, 0

    def close(self) -> None:
        self.flush()
        assert self.writer is not None  # flush opens it
        self.writer.close()


def collect_sweep(
    sweep_dir: str | os.PathLike, write_curves_file: bool = True, workers: Optional[int] = None, curves: str = "parquet"
) -> Collected:
    """Gather every run of ``sweep_dir`` (see the module docstring); writes ``curves.parquet`` atomically
    (``curves="csv"``: the former ``curves.csv``, streamed as the files are parsed)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"sweep directory {sweep_dir} does not exist")
    metas, skipped = run_metas(sweep_dir)
    warnings: list[str] = []
    not_started = [m for m in metas if m.state in _NOT_STARTED and not (m.run_dir / METRICS_FILE).exists()]
    metas = [m for m in metas if m not in not_started]
    if not_started:
        warnings.append(f"{len(not_started)} run(s) not started yet ({_names(not_started)})")
    if curves not in ("parquet", "csv"):
        raise UserError(f"curves: must be parquet or csv, got {curves!r}")
    as_csv = write_curves_file and curves == "csv"
    tasks = [
        (m.run_dir / METRICS_FILE, _csv_prefix(m) if as_csv else None, m.flops_per_token, m.state == "diverged")
        for m in metas
    ]
    csv_path = sweep_dir / CSV_FILE if as_csv else None
    parquet_path = sweep_dir / CURVES_FILE if write_curves_file and curves == "parquet" else None
    runs: list[CollectedRun] = []
    parsed_curves: dict[str, Curve] = {}
    n_workers = _workers(len(tasks), workers) if as_csv else 1
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(stack.enter_context(atomic_path(csv_path)), "wb")) if csv_path else None
        sink = _CurvesSink(stack.enter_context(atomic_path(parquet_path))) if parquet_path else None
        if n_workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork")))
            results: Iterable[_Parsed] = pool.map(
                _parse_task, tasks, chunksize=max(1, min(64, len(tasks) // (4 * n_workers)))
            )
        else:
            results = map(_parse_task, tasks) if as_csv else _bulk_parsed(tasks, workers)
        if out:
            out.write(CSV_HEADER.encode() + b"\n")
        for meta, parsed in zip(metas, results):
            for issue in parsed.issues:
                warnings.append(f"{meta.name}: {issue}")
            if parsed.error:
                skipped.append((meta.name, parsed.error))
                continue
            assert parsed.curve is not None  # a file read without error has a curve
            runs.append(_summarise(meta, parsed, warnings))
            parsed_curves[meta.name] = parsed.curve
            if out:
                out.write(parsed.csv)
            if sink:
                sink.add(runs[-1], parsed.curve)
        if sink:
            sink.close()
    curves_path = csv_path or parquet_path
    unfinished = [r for r in runs if r.state != "completed" and not r.diverged]
    if unfinished:
        warnings.append(
            f"{len(unfinished)} run(s) not completed: curves kept, no final point "
            f"({', '.join(f'{r.name} {r.state}' for r in unfinished[:5])}"
            f"{', ...' if len(unfinished) > 5 else ''})"
        )
    final_points = [
        {
            "name": r.name,
            "family": r.meta.family,
            "N": r.meta.N,
            "N_non_embedding": r.meta.N_non_embedding,
            "D": r.D,
            "C": r.C,
            "loss": r.loss,
            "loss_source": r.loss_source,
            "budget": r.meta.budget,
            "holdout": r.meta.holdout,
        }
        for r in runs
        if r.state == "completed" and not r.diverged and r.meta.role not in ("trunk", "target")
    ]
    return Collected(sweep_dir, runs, parsed_curves, final_points, skipped, warnings, curves_path)


def _names(metas: list[RunMeta], limit: int = 5) -> str:
    return ", ".join(m.name for m in metas[:limit]) + (", ..." if len(metas) > limit else "")


def _summarise(meta: RunMeta, parsed: _Parsed, warnings: list[str]) -> CollectedRun:
    curve = parsed.curve
    assert curve is not None  # only runs read without error are summarised
    reached = float(curve.D[-1])
    run = CollectedRun(meta, points=len(curve), D=reached, C=float(curve.C[-1]))
    run.diverged = meta.state == "diverged" or parsed.nonfinite_step is not None
    if run.diverged:
        why = "state diverged" if meta.state == "diverged" else f"non-finite loss at step {parsed.nonfinite_step}"
        warnings.append(f"{meta.name}: diverged ({why}): kept out of the fits")
        return run
    if meta.state == "unknown" and reached >= meta.D:
        meta.state = "completed"
        warnings.append(f"{meta.name}: no state recorded; its curve reached its {meta.D:.4g} tokens: completed")
    run.loss, run.loss_source = _final_loss(curve)
    if meta.state == "completed" and reached < 0.99 * meta.D:
        warnings.append(f"{meta.name}: completed, but its metrics end at {reached:.4g} of {meta.D:.4g} tokens")
    if parsed.last and isinstance(parsed.last.get("tokens_per_s"), (int, float)):
        run.tokens_per_s = float(parsed.last["tokens_per_s"])
    return run


# ---------------------------------------------------------------------------------------------- CLI


def resolve_sweep_dir(value: str, sweeps_root: Optional[str] = None) -> Path:
    """``sweep=<name>`` names ``<sweeps_root>/<name>``; a path to a sweep directory works too."""
    if not value:
        raise UserError("sweep: give the sweep's name (sweep=<name>) or its directory")
    direct = Path(value)
    if direct.is_dir() and (
        (direct / "runs").is_dir() or (direct / "plan.json").exists() or (direct / "jobdb.sqlite").exists()
    ):
        return direct
    if sweeps_root is None:
        from launcher.config.compose import compose

        sweeps_root = compose([]).get("sweeps_root") or "sweeps"
    path = Path(sweeps_root) / value
    if not path.is_dir():
        raise UserError(
            f"sweep={value}: no sweep directory {path} (sweeps_root={sweeps_root}); "
            f"run `ladder sweep` or `ladder submit` first, or give sweeps_root=<dir>"
        )
    return path


def parse_sweep_args(
    argv: list[str],
    prog: str,
    description: str,
    add_arguments: Optional[Callable[[CommandParser], object]] = None,
    keys: tuple[str, ...] = (),
) -> tuple[argparse.Namespace, Path]:
    """The shared command line of collect, fit, report and wandb-sync: ``sweep=<name> [sweeps_root=<dir>]``;
    ``keys``: more ``key=value`` arguments the command takes (``ladder fit``'s ``metric``), set on the namespace."""
    allowed = ("sweep", "sweeps_root", "sweep.name", *keys)
    parser = command_parser(
        prog, description, overrides_help="sweep=<name> [sweeps_root=<dir>]" + "".join(f" [{k}=<{k}>]" for k in keys)
    )
    if add_arguments:
        add_arguments(parser)
    args = parser.parse(argv)
    values = {}
    for item in args.overrides:
        key, eq, value = item.partition("=")
        if not eq or key not in allowed:
            raise UserError(
                f"{item}: unknown argument; allowed: sweep=<name>, sweeps_root=<dir>"
                + "".join(f", {k}=<{k}>" for k in keys)
            )
        values["sweep" if key == "sweep.name" else key] = value
    for key in keys:
        setattr(args, key, values.get(key))
    return args, resolve_sweep_dir(values.get("sweep", ""), values.get("sweeps_root"))


def main(argv: list[str]) -> int:
    args, sweep_dir = parse_sweep_args(
        argv,
        "ladder collect",
        "gather every run's metrics.jsonl into curves.parquet",
        lambda p: p.add_argument("--json", action="store_true", help="print the collection as JSON"),
    )
    collected = collect_sweep(sweep_dir)
    if args.json:
        print(json.dumps(collected.to_json(), indent=1))
        return 0
    print(
        f"{len(collected.runs)} runs collected, {len(collected.final_points)} final points, "
        f"{sum(len(c) for c in collected.curves.values())} curve points -> {collected.curves_path}"
    )
    for name, why in collected.skipped:
        print(f"skipped {name}: {why}")
    for warning in collected.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
