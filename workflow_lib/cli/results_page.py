"""Entry point: a results page rewritten from the committed files beside it, or made anew from a pipeline run.

  python -m workflow_lib.cli.results_page --page docs/results/real-small.md            # from its committed files
  python -m workflow_lib.cli.results_page --page docs/results/real-small.md --check    # exit 1 naming what differs
  python -m workflow_lib.cli.results_page --page README.md --spec docs/results/readme.yaml --check
  python -m workflow_lib.cli.results_page --page docs/results/real-small.md \\          # from a run (what
      --tables results/tables/*.csv --figures results/figures/*/*.png \\                  # `snakemake results_page`
      --benchmarks results/benchmarks --rule-benchmark tables=results/benchmarks/tables.tsv ... \\   # runs)
      --configfile configs/real-small.yaml

From a run: the tables and PNG figures are copied into the page's folder (docs/results/real-small/), with
timings.csv (per rule, from the benchmark files; --rule-benchmark RULE=PATTERN names each rule's pattern) and
manifest.json (command, config files and their sha256, each run's commit, seed and package versions, every file's
sha256); then every generated block and value of the page is rewritten. docs/results/README.md says how a page is
marked up and checked.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workflow_lib.analysis.results_page import SPEC, PageError, check, collect, load_spec, page_folder, render
from workflow_lib.artifacts import write_text


def rule_pattern(text: str) -> tuple[str, str]:
    name, sep, pattern = text.partition("=")
    if not sep or not name or not pattern:
        raise argparse.ArgumentTypeError(f"{text!r} is not RULE=PATTERN")
    return name, pattern


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.results_page", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page", required=True, type=Path, help="the Markdown page")
    p.add_argument("--spec", type=Path, help=f"its spec (default: the page's folder/{SPEC})")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 listing each generated line that differs from what the files make, "
                        "each number of the prose no committed file holds")
    run = p.add_argument_group("from a run (all of these, or none)")
    run.add_argument("--tables", nargs="+", type=Path, help="the run's CSV tables")
    run.add_argument("--figures", nargs="*", type=Path, default=[], help="its figures (PNG copied)")
    run.add_argument("--figures-root", type=Path, default=Path("results/figures"),
                     help="the figures' folder: a figure's path below it names its copy (mistral/coqa.png -> "
                          "mistral-coqa.png)")
    run.add_argument("--benchmarks", type=Path, help="the run's benchmark folder (results/benchmarks)")
    run.add_argument("--rule-benchmark", action="append", type=rule_pattern, default=[], metavar="RULE=PATTERN",
                     help="a rule's benchmark pattern as Snakemake spells it; repeatable")
    run.add_argument("--skip-benchmark", action="append", default=[], metavar="FILE",
                     help="a benchmark file to leave out of timings.csv (the page job's own)")
    run.add_argument("--configfile", nargs="+", type=Path, help="the config files of the run, in order")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    a = p.parse_args(argv)
    given = [a.tables is not None, a.benchmarks is not None, a.configfile is not None]
    if any(given) and not all(given):
        p.error("from a run, give --tables, --benchmarks and --configfile together")
    a.from_run = all(given)
    if a.from_run and (a.check or a.spec is not None):
        p.error("--check and --spec are for a page rewritten from its committed files, not from a run")
    if not a.page.is_file():
        p.error(f"--page: no file {str(a.page)!r}")
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    try:
        if a.from_run:
            collect(a.page, a.tables, a.figures, a.figures_root, a.benchmarks, dict(a.rule_benchmark), a.configfile,
                    tuple(a.skip_benchmark))
            print(f"{a.page}: rewritten from the run; its files in {page_folder(a.page)}/")
            return
        spec_path = a.spec or page_folder(a.page) / SPEC
        if a.check:
            problems = check(a.page, spec_path)
            if problems:
                sys.exit("\n".join(problems))
            print(f"{a.page}: every generated part is what its files make; no measurement is typed into its prose")
            return
        text = a.page.read_text(encoding="utf-8")
        made = render(text, load_spec(spec_path), spec_path.parent)
        if made != text:
            write_text(a.page, made)
        print(f"{a.page}: {'rewritten' if made != text else 'unchanged'} from {spec_path.parent}/")
    except PageError as e:
        sys.exit(f"results_page: error: {e}")


if __name__ == "__main__":
    main()
