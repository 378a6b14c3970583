"""A results page whose every table and quoted number comes from the committed files beside it (no torch here).

A page docs/results/NAME.md keeps its files in docs/results/NAME/: the run's tables, PNG figures, timings.csv (per
rule, from the run's `benchmark:` files: analysis/timings.py), manifest.json (what made them) and page.yaml, the
spec of what each generated part shows (analysis/page_blocks.py). In the Markdown,

  <!-- generated: BLOCK -->           a table (or the run's provenance, or the figures) the generator rewrites
  ...
  <!-- /generated -->
  <!-- value: VALUE -->1.274<!-- /value -->   one number quoted in the prose, rewritten the same way

and the rest of the prose may not quote a measurement (loose_numbers): a decimal, a percentage, a thousands-grouped
integer, a time (`445 s`, `53 min`) or a speed factor (`1.3x`) outside the generated parts is refused, unless the
spec lists it among its `constants` (settings such as the 95% interval level, each with its source). Plain integers
(block 14, 2 shots) are not checked: a count that is a result is an inline value too.

collect() makes the folder from a run (copies, timings.csv, manifest.json) and renders the page; render() rewrites
a page from its committed folder: what `python -m workflow_lib.cli.results_page` and tests/test_results_pages.py do.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from fnmatch import fnmatch
from pathlib import Path

import pandas as pd
import yaml

from workflow_lib.analysis.page_blocks import SpecError, check_spec, duration, render_table, render_value
from workflow_lib.analysis.runs import runs_of
from workflow_lib.analysis.timings import TOTAL, run_timings
from workflow_lib.artifacts import atomic_path, git_commit, write_text
from workflow_lib.pipeline.paths import PAGE_MANIFEST, PAGE_SPEC, page_folder as folder_of

SPEC, MANIFEST, TIMINGS = PAGE_SPEC, PAGE_MANIFEST, "timings.csv"
SPEC_KEYS = {"defs", "blocks", "values", "labels", "order", "constants", "keep"}
BLOCK = re.compile(r"<!-- generated: (?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /generated -->", re.S)
VALUE = re.compile(r"<!-- value: (?P<name>[\w-]+) -->(?P<body>.*?)<!-- /value -->", re.S)
# What loose_numbers leaves out: code, comments (the markers), link targets.
UNCHECKED = re.compile(r"```.*?```|`[^`\n]*`|<!--.*?-->|\]\([^)]*\)", re.S)
NUMBER = re.compile(r"(?<![\w.~/])(?<![A-Za-z]-)(?P<num>\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)*)"
                    r"(?P<unit>\s?%|x\b|\s(?:ms|s|min|h|seconds|minutes|hours|job-seconds)\b)?(?![\w.]*\d)")


class PageError(ValueError):
    """A page, spec or run that cannot make the page: the message says which and why."""


def page_folder(page: str | Path) -> Path:
    """docs/results/real-small.md -> docs/results/real-small (its committed files)."""
    return Path(folder_of(str(page)))


def load_spec(path: Path) -> dict:
    if not path.is_file():
        raise PageError(f"{path}: no page spec (what each generated block of the page shows)")
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise PageError(f"{path}: unknown key {', '.join(unknown)} (known: {', '.join(sorted(SPEC_KEYS))})")
    try:
        for kind in ("block", "value"):
            for name, entry in (spec.get(f"{kind}s") or {}).items():
                check_spec(kind, name, entry)
    except SpecError as e:
        raise PageError(f"{path}: {e}") from None
    return spec


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- the built-in blocks ----------------------------------------------------------------------------------------
def render_provenance(folder: Path) -> str:
    """What made the page's files, from manifest.json and timings.csv."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return ("*Waiting for the run: no `manifest.json` beside this page, so the command, config, commit, seed, "
                "versions and time that made its files are not on record.*")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    configs = ", ".join(f"`{c['path']}` (sha256 `{c['sha256'][:16]}`)" for c in manifest["configfiles"])
    lines = [f"- **Command:** `{manifest['command']}`; this page: `{manifest['page_command']}`",
             f"- **Config:** {configs}"]
    for run, made in manifest["runs"].items():
        lines.append(f"- **Run `{run}`** ({made['rows']} rows of the tables): commit `{made['git_commit']}`, "
                     f"seed {made['seed']}, {made['packages']}")
    if not manifest["runs"]:
        lines.append("- **Runs:** the tables carry no run column")
    timings = folder / TIMINGS
    if timings.is_file():
        totals = pd.read_csv(timings).query("rule == @TOTAL")
        for _, total in totals.iterrows():
            which = f" of the run with `{total['configfiles']}`" if len(totals) > 1 else ""
            lines.append(f"- **Time{which}:** {int(total['jobs'])} jobs, {duration(total['elapsed_seconds'])} from "
                         f"the first job's start to the last one's end, {total['wall_seconds']:,.0f} job-seconds "
                         f"(`{TIMINGS}`)")
    return "\n".join(lines)


def render_figures(folder: Path) -> str:
    """Every PNG of the folder, linked from the page."""
    figures = sorted(p.name for p in folder.glob("*.png"))
    if not figures:
        return "*Waiting for the run: no figure is committed beside this page yet.*"
    return "\n".join(f"- [`{name}`]({folder.name}/{name})" for name in figures)


# ---- the page ---------------------------------------------------------------------------------------------------
def render(text: str, spec: dict, folder: Path) -> str:
    """The page with every generated block and value rewritten from the files in `folder`."""
    blocks, values = spec.get("blocks") or {}, spec.get("values") or {}
    order, labels = spec.get("order") or {}, spec.get("labels") or {}
    found = [m["name"] for m in BLOCK.finditer(text)]
    for kind, names, declared in (("block", found, blocks), ("value", [m["name"] for m in VALUE.finditer(text)],
                                                               values)):
        unknown = sorted(set(names) - set(declared))
        unused = sorted(set(declared) - set(names))
        if unknown or unused:
            raise PageError(f"{kind}s the page marks but its spec does not declare: {unknown}; declared but not on "
                            f"the page: {unused}")
    twice = sorted({n for n in found if found.count(n) > 1})
    if twice:
        raise PageError(f"blocks marked more than once: {twice}")

    def block(match: re.Match) -> str:
        name = match["name"]
        entry = blocks[name]
        kind = entry.get("kind", "table")
        try:
            if kind == "provenance":
                body = render_provenance(folder)
            elif kind == "figures":
                body = render_figures(folder)
            elif kind == "table":
                body = render_table(entry, folder, order, labels)
            else:
                raise SpecError(f"kind {kind!r} is not table, provenance or figures")
        except SpecError as e:
            raise PageError(f"block {name}: {e}") from None
        note = f"\n\n{entry['note'].strip()}" if entry.get("note") else ""
        return f"<!-- generated: {name} -->\n{body}{note}\n<!-- /generated -->"

    def value(match: re.Match) -> str:
        try:
            return f"<!-- value: {match['name']} -->{render_value(values[match['name']], folder, order, labels)}" \
                   "<!-- /value -->"
        except SpecError as e:
            raise PageError(f"value {match['name']}: {e}") from None

    return VALUE.sub(value, BLOCK.sub(block, text))


def loose_numbers(text: str, constants: dict) -> list[str]:
    """'LINE: NUMBER' for each measured-looking number of the prose (a decimal, a percentage, a thousands-grouped
    integer, a time or a speed factor) outside generated blocks, values, code and comments that the spec does not
    list as a constant: such a number has to be generated."""
    text = VALUE.sub(lambda m: " " * len(m[0]), BLOCK.sub(lambda m: "\n" * m[0].count("\n"), text))
    text = UNCHECKED.sub(lambda m: re.sub(r"[^\n]", " ", m[0]), text)
    loose = []
    for match in NUMBER.finditer(text):
        number, unit = match["num"], (match["unit"] or "").strip()
        if number.count(".") > 1:  # a version, 2.13.0
            continue
        if "." not in number and "," not in number and not unit:
            continue  # a plain integer: block 14, 2 shots
        if match[0].strip() not in constants and number + unit not in constants:
            loose.append(f"{text.count(chr(10), 0, match.start()) + 1}: {match[0].strip()}")
    return loose


def check(page: Path, spec_path: Path | None = None) -> list[str]:
    """What is wrong with a committed page: a generated part that differs from what its files make (by line), a
    loose number, a file the manifest lists with other contents. Empty: the page is what its files make."""
    spec_path = spec_path or page_folder(page) / SPEC
    spec = load_spec(spec_path)
    folder = spec_path.parent
    text = page.read_text(encoding="utf-8")
    problems = []
    made = render(text, spec, folder)
    if made != text:
        for i, (old, new) in enumerate(zip(text.splitlines(), made.splitlines()), 1):
            if old != new:
                problems.append(f"{page}:{i}: generated text differs: committed {old!r}, from the files {new!r}")
        if not problems:
            problems.append(f"{page}: generated text differs from the files' (line count)")
    problems += [f"{page}:{n} is a number typed into the prose: make it a generated value (or, a setting, a "
                 f"constant of the spec)" for n in loose_numbers(text, spec.get("constants") or {})]
    manifest = folder / MANIFEST
    if manifest.is_file():
        made = json.loads(manifest.read_text(encoding="utf-8"))
        problems += [f"{folder / name}: differs from the run's copy (manifest.json)"
                     for name, digest in made["files"].items()
                     if not (folder / name).is_file() or sha256(folder / name) != digest]
        for table in sorted(folder.glob("*.csv")):
            runs = pd.read_csv(table).get("run", pd.Series(dtype=str)).dropna()
            unknown = sorted({key for keys in runs for key in keys.split("+")} - set(made["runs"]))
            if unknown:
                problems.append(f"{table}: run {', '.join(unknown)} is not in manifest.json")
    return problems


# ---- from a run -------------------------------------------------------------------------------------------------
def figure_name(figure: Path, figures_root: Path) -> str:
    """results/figures/mistral/triviaqa.png -> mistral-triviaqa.png"""
    return "-".join(figure.relative_to(figures_root).parts)


def collect(page: Path, tables: list[Path], figures: list[Path], figures_root: Path, benchmarks: Path,
            rule_patterns: dict[str, str], configfiles: list[Path], skip_benchmarks: tuple[str, ...] = ()) -> str:
    """Make the page's folder from a run: its tables and PNG figures copied, timings.csv (with the rows of the
    earlier runs this one extends, from the folder's timings.csv: analysis/timings.run_timings), manifest.json (the
    spec and the files the spec's `keep` globs name stay; everything else in the folder goes), then the page rendered
    from it. Everything is checked, and the page rendered, before anything is replaced. Returns the page's text."""
    folder = page_folder(page)
    spec = load_spec(folder / SPEC)
    if not page.is_file():
        raise PageError(f"{page}: no such page")
    absent = [str(p) for p in [*tables, *figures, *configfiles] if not p.is_file()]
    if absent:
        raise PageError(f"not found: {', '.join(absent)}")
    names = [t.name for t in tables] + [figure_name(f, figures_root) for f in figures if f.suffix == ".png"]
    clash = sorted({n for n in names if names.count(n) > 1} | ({SPEC, MANIFEST, TIMINGS} & set(names)))
    if clash:
        raise PageError(f"two files would be copied as {clash}")
    earlier = pd.read_csv(folder / TIMINGS) if (folder / TIMINGS).is_file() else None
    try:
        timings = run_timings(benchmarks, rule_patterns, [str(c) for c in configfiles], skip_benchmarks, earlier)
    except ValueError as e:
        raise PageError(str(e)) from None
    keep = spec.get("keep") or []
    with atomic_path(folder) as made:
        made.mkdir()
        for path in folder.glob("*") if folder.is_dir() else []:
            if path.name == SPEC or any(fnmatch(path.name, pattern) for pattern in keep):
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, made / path.name)
        for table in tables:
            shutil.copyfile(table, made / table.name)
        for figure in figures:
            if figure.suffix == ".png":
                shutil.copyfile(figure, made / figure_name(figure, figures_root))
        timings.to_csv(made / TIMINGS, index=False)
        runs = {}
        for table in tables:
            for run, entry in runs_of(pd.read_csv(table)).items():
                runs.setdefault(run, {**entry, "rows": 0})["rows"] += entry["rows"]
        configs = " ".join(str(c) for c in configfiles)
        manifest = {
            "page": str(page), "command": f"snakemake --cores all --configfile {configs}",
            "page_command": f"snakemake results_page --cores all --configfile {configs}",
            "configfiles": [{"path": str(c), "sha256": sha256(c)} for c in configfiles],
            "runs": runs, "page_made_at_commit": git_commit(),
            # a kept folder (a benchmark's JSONs, made after the run) is not the run's: its files say what made them
            "files": {p.name: sha256(p) for p in sorted(made.iterdir()) if p.name != SPEC and p.is_file()},
        }
        (made / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        text = render(page.read_text(encoding="utf-8"), spec, made)
    write_text(page, text)
    return text
