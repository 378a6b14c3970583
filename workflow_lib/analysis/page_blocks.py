"""What a results page's generated tables and inline values show, declared in its spec (no torch here).

A page's spec (docs/results/PAGE/page.yaml, docs/results/README.md) names each block and inline value and says how
its text is made from the committed files beside the page, in this order:

  csv          a file of the folder, or {label: file, ...} read one after the other with the label in `file_column`;
               a .json file is a benchmark's (its `rows`, with its scalar fields beside: read_benchmark)
  records      the list of a benchmark JSON the table reads instead of `rows` (speculative_7b.py's `ideal`)
  requires     columns the block needs; a file or column not (yet) committed renders a "waiting for the run" line
  optional     columns that may be absent (tables made before they existed): empty where they are
  query        rows kept (pandas query, python engine: `series.str.startswith('oracle')`, `ci_high < 0`)
  widen        {index: [...], columns: COLUMN, values: [...]}: one row per index, VALUE_LEVEL columns
               (`top1_lens`; characters other than letters, digits and _ become _); `levels: [...]` makes those
               levels' columns even where no row has them (empty: a task a run did not evaluate)
  where        rows kept after widening
  group        {by: [...], aggregate: {NAME: size | sum:EXPR | min:EXPR | max:EXPR | mean:EXPR}}
  sort         columns to sort by (-column: descending; the spec's `order` of their values, else natural order)
  unique       columns whose first row per combination is kept (after sorting: the best of each)
A block then has `columns`: [{HEADER: TEMPLATE}, ...]; a value has `agg` (one: the single row, the default; count,
min, max, sum over `column`, an expression) and `format`. Templates are Python format strings over the row's
columns (`{crf_exact:.3f} [{delta_ci_low:+.3f}, {delta_ci_high:+.3f}]`, `{wall_seconds:duration}`, dotted names as
they are: `{speculation.acceptance:.3f}`); a field that is empty gives the whole cell the block's `missing` text.
The spec's `defs` holds what blocks and values share (YAML anchors: `<<: *name`); its `labels` ({column: {value:
shown}}) apply to what templates show, after every selection.
A table with a `series` column and no head column also gets `head`, `policy`, `emission` and `calibrated` (its
delta) from the series' name (tables.series_name spells them). The grid (a table with `method`) also gets `series`,
its task's headline metric (tables.HEADLINE_METRICS, the first) as `headline_metric` and `headline` with its
`_ci_low`, `_ci_high`, `_delta`, `_delta_ci_low`, `_delta_ci_high`, and `flag`: ', invalid (degenerate)' on an
invalid point, else empty.
"""
from __future__ import annotations

import json
import math
import re
import string
from pathlib import Path

import pandas as pd

from workflow_lib.analysis.tables import HEADLINE_METRICS, INTERVAL_SUFFIXES, series_name
from workflow_lib.choices import DEFAULT_EMISSION

BLOCK_KEYS = {"kind", "csv", "records", "file_column", "requires", "optional", "query", "widen", "where", "group",
              "sort", "unique", "columns", "missing", "note"}
VALUE_KEYS = BLOCK_KEYS - {"kind", "columns"} | {"agg", "column", "format"}
AGGREGATES = ("one", "count", "min", "max", "sum")
CALIBRATED = re.compile(r" calibrated delta=(?P<delta>[0-9.e-]+)$")


class SpecError(ValueError):
    """A page spec that cannot be applied: the message names the block or value."""


class Waiting(Exception):
    """A block's files or columns are not committed yet: its text says so instead."""


def duration(seconds: float) -> str:
    """2275 -> '37 min 55 s', 3840 -> '1 h 04 min', 58.2 -> '58 s'."""
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Empty(Exception):
    """A template field with no value: the cell shows the block's `missing` text."""


class CellFormatter(string.Formatter):
    """str.format over a row: dotted column names as they are, `duration` as a format, an empty field raises Empty."""

    def get_field(self, field_name, args, kwargs):
        if field_name in kwargs:
            return kwargs[field_name], field_name
        raise KeyError(field_name)

    def format_field(self, value, format_spec):
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            raise Empty
        if format_spec == "duration":
            return duration(float(value))
        if hasattr(value, "item"):  # numpy scalars format as Python's
            value = value.item()
        return format(value, format_spec)


FORMATTER = CellFormatter()


def fill(template: str, row: dict, missing: str) -> str:
    try:
        return FORMATTER.format(template, **row)
    except Empty:
        return missing
    except KeyError as e:
        raise SpecError(f"template {template!r}: no column {e.args[0]!r}") from None


def series_parts(series) -> dict:
    """'calm / recompute / translator calibrated delta=0.1' -> head calm, policy recompute, emission translator,
    calibrated 0.1; 'oracle / skip' -> head oracle; 'layer pruning', 'full model' -> head None."""
    if not isinstance(series, str):
        return {"head": None, "policy": None, "emission": None, "calibrated": None}
    calibrated = CALIBRATED.search(series)
    name = series[: calibrated.start()] if calibrated else series
    parts = name.split(" / ")
    if len(parts) < 2:
        return {"head": None, "policy": None, "emission": None, "calibrated": None}
    return {"head": parts[0], "policy": parts[1], "emission": parts[2] if len(parts) > 2 else DEFAULT_EMISSION,
            "calibrated": float(calibrated["delta"]) if calibrated else None}


def read_csv(folder: Path, source, file_column: str | None, records: str) -> pd.DataFrame:
    files = source if isinstance(source, dict) else {None: source}
    frames = []
    for label, name in files.items():
        path = folder / name
        if not path.is_file():
            raise Waiting(f"`{name}` is not committed beside this page yet")
        frame = read_benchmark(path, records) if path.suffix == ".json" else pd.read_csv(path)
        if label is not None:
            frame.insert(0, file_column or "file", label)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    if "series" in table and "head" not in table:
        parts = pd.DataFrame([series_parts(s) for s in table["series"]], index=table.index)
        table = pd.concat([table, parts], axis=1)
    if "method" in table and "task" in table:
        table = with_headline(table)
    return table


def read_benchmark(path: Path, records: str) -> pd.DataFrame:
    """A benchmark's JSON (benchmarks/timing.py's `save`) as a table: one row per entry of its list `records` (nested
    fields dotted: `ms_per_token_spread.q1`), with its scalar top-level fields (task, prompts, git_commit, ...)
    beside."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data.get(records), list):
        raise SpecError(f"{path}: this benchmark JSON holds no list under {records!r}")
    frame = pd.json_normalize(data[records])
    for key, value in data.items():
        if key not in frame and (value is None or isinstance(value, (str, int, float, bool))):
            frame[key] = value
    return frame


def with_headline(grid: pd.DataFrame) -> pd.DataFrame:
    """The grid with its series names, each row's headline metric and its intervals under one name, and a flag."""
    grid = grid.copy()
    grid["series"] = grid.apply(series_name, axis=1)
    grid["headline_metric"] = grid["task"].map(lambda t: HEADLINE_METRICS.get(t, [None])[0])
    for suffix in [""] + INTERVAL_SUFFIXES:
        grid[f"headline{suffix}"] = [row.get(f"{row['headline_metric']}{suffix}") if row["headline_metric"] else None
                                     for row in grid.to_dict("records")]
    grid["flag"] = ["" if pd.isna(valid) or bool(valid) else ", invalid (degenerate)"
                    for valid in grid.get("valid", pd.Series(True, index=grid.index))]
    return grid


def widen(table: pd.DataFrame, spec: dict) -> pd.DataFrame:
    index, column, values = spec["index"], spec["columns"], spec["values"]
    if table.duplicated(index + [column]).any():
        raise SpecError(f"widen: several rows per {index + [column]}; narrow the query")
    wide = table.pivot(index=index, columns=column, values=values)
    wide.columns = [_wide_name(value, level) for value, level in wide.columns]
    for name in (_wide_name(value, level) for value in values for level in spec.get("levels", [])):
        if name not in wide:
            wide[name] = None
    return wide.reset_index()


def _wide_name(value: str, level) -> str:
    return re.sub(r"\W", "_", f"{value}_{level}")


def aggregate(table: pd.DataFrame, spec: dict) -> pd.DataFrame:
    rows = []
    for key, rows_of in table.groupby(spec["by"], sort=False, dropna=False):
        row = dict(zip(spec["by"], key if isinstance(key, tuple) else (key,)))
        for name, op in spec["aggregate"].items():
            how, _, expr = op.partition(":")
            if how == "size":
                row[name] = len(rows_of)
            elif how in ("sum", "min", "max", "mean"):
                row[name] = getattr(rows_of.eval(expr, engine="python"), how)()
            else:
                raise SpecError(f"group: aggregate {name}: {op!r} is not size, sum:, min:, max: or mean:")
        rows.append(row)
    return pd.DataFrame(rows, columns=spec["by"] + list(spec["aggregate"]))


def sort(table: pd.DataFrame, by: list[str], order: dict) -> pd.DataFrame:
    """By each column (-name: descending), its values in the spec's `order` first where it gives one."""
    def key(column: pd.Series):
        ranks = {value: i for i, value in enumerate(order.get(column.name, []))}
        return column.map(lambda v: ranks.get(v, len(ranks))) if ranks else column
    columns = [c.lstrip("-") for c in by]
    return table.sort_values(columns, ascending=[not c.startswith("-") for c in by], key=key, kind="stable")


def select(spec: dict, folder: Path, order: dict) -> pd.DataFrame:
    """The rows a block or value shows, before formatting (raises Waiting where its files are not there yet)."""
    table = read_csv(folder, spec["csv"], spec.get("file_column"), spec.get("records", "rows"))
    absent = [c for c in spec.get("requires", []) if c not in table]
    if absent:
        raise Waiting(f"`{spec['csv']}` has no column {', '.join(absent)} yet")
    for column in spec.get("optional", []):
        if column not in table:
            table[column] = None
    for step in ("query", "widen", "where", "group", "sort", "unique"):
        if spec.get(step) is None:  # absent, or null: a step a YAML merge (<<: *anchor) brought, cancelled
            continue
        try:
            if step in ("query", "where"):
                table = table.query(spec[step], engine="python")
            elif step == "widen":
                table = widen(table, spec[step])
            elif step == "group":
                table = aggregate(table, spec[step])
            elif step == "unique":
                table = table.drop_duplicates(subset=spec[step])
            else:
                table = sort(table, spec[step], order)
        except (KeyError, NameError, SyntaxError, TypeError, pd.errors.UndefinedVariableError) as e:
            raise SpecError(f"{step}: {type(e).__name__}: {e}") from None
    return table


def labelled(table: pd.DataFrame, labels: dict) -> list[dict]:
    shown = table.replace({c: m for c, m in labels.items() if c in table}) if labels else table
    return shown.to_dict("records")


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(headers), line(["---"] * len(headers)), *map(line, rows)])


def render_table(spec: dict, folder: Path, order: dict, labels: dict) -> str:
    """A table block's Markdown (or the line saying what it waits for)."""
    try:
        table = select(spec, folder, order)
    except Waiting as e:
        return f"*Waiting for the run: {e}.*"
    columns = [next(iter(c.items())) for c in spec["columns"]]
    if table.empty:
        return f"*No row of `{spec['csv']}` matches this table's selection.*"
    missing = spec.get("missing", "-")
    rows = [[fill(template, row, missing) for _, template in columns] for row in labelled(table, labels)]
    return markdown_table([header for header, _ in columns], rows)


def render_value(spec: dict, folder: Path, order: dict, labels: dict) -> str:
    """An inline value's text."""
    try:
        table = select(spec, folder, order)
    except Waiting:
        return "(waiting for the run)"
    how = spec.get("agg", "one")
    missing = spec.get("missing", "none")
    if how == "one":
        if len(table) > 1:
            raise SpecError(f"{len(table)} rows match where one is expected")
        return missing if table.empty else fill(spec["format"], labelled(table, labels)[0], missing)
    if how == "count":
        value = len(table)
    elif table.empty:
        return missing
    else:
        value = getattr(table.eval(spec["column"], engine="python"), how)()
    return fill(spec.get("format", "{value}"), {"value": value}, missing)


def check_spec(kind: str, name: str, spec: dict) -> None:
    allowed = BLOCK_KEYS if kind == "block" else VALUE_KEYS
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise SpecError(f"{kind} {name}: unknown key {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")
    if spec.get("kind", "table") != "table":
        return
    for key in ("csv",) + (("columns",) if kind == "block" else ()):
        if key not in spec:
            raise SpecError(f"{kind} {name}: no {key}")
    if kind == "value" and spec.get("agg", "one") not in AGGREGATES:
        raise SpecError(f"value {name}: agg {spec['agg']!r} is not one of {', '.join(AGGREGATES)}")
    if kind == "value" and spec.get("agg", "one") in ("min", "max", "sum") and "column" not in spec:
        raise SpecError(f"value {name}: agg {spec['agg']} needs a column")
    if kind == "value" and spec.get("agg", "one") == "one" and "format" not in spec:
        raise SpecError(f"value {name}: no format")
