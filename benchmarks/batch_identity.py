"""A finished evaluation grid re-evaluated at another batch size: identical generations, metrics, CPU time (issue 11).

Every evaluation job of a pipeline run (the folders under RESULTS/eval holding record.json files) is run again
with the exact settings its records carry (provenance), at --batch-size B, into a scratch folder, one
`python -m workflow_lib.cli.evaluate` process per job as the pipeline runs it. Then, per grid point: how many
generations have exactly the recorded token ids and exit layers, and each metric before and after; per job: the
CPU seconds of the process (this run) against the recorded job's (the rule's benchmark file, when present).

  python benchmarks/batch_identity.py --workdir PIPELINE_DIR --batch-size 32 --jobs 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from timing import save

REPO = Path(__file__).resolve().parents[1]
FLAGS_WITH_LISTS = {"thresholds", "prune_series"}
NOT_PASSED = {"out_dir", "reuse", "batch_size", "threads"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, type=Path, help="the pipeline run's folder (holds results/)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--jobs", type=int, default=1, help="evaluation processes at a time (default 1)")
    p.add_argument("--match", default="", help="only the jobs whose output folder contains this (e.g. head~calm)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1, as the pipeline)")
    p.add_argument("--seed", type=int, default=0, help="recorded only")
    p.add_argument("--out", default="results/benchmarks/batch_identity.json")
    return p.parse_args()


def jobs(workdir: Path) -> dict[str, dict]:
    """One entry per evaluation job: its recorded settings and the grid points (record folders) it made."""
    found: dict[str, dict] = {}
    for record in sorted((workdir / "results/eval").rglob("record.json")):
        config = json.loads(record.read_text())["provenance"]["config"]
        job = found.setdefault(config["out_dir"], {"config": config, "points": []})
        job["points"].append(record.parent.relative_to(workdir / config["out_dir"]).as_posix())
    return found


def argv(config: dict, out_dir: Path, batch_size: int, threads: int) -> list[str]:
    words = []
    for key, value in sorted(config.items()):
        if key in NOT_PASSED or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif key in FLAGS_WITH_LISTS:
            words += [flag, ",".join(str(spelled) for spelled, _ in value)]
        else:
            words += [flag, str(value)]
    return words + ["--out-dir", str(out_dir), "--batch-size", str(batch_size), "--threads", str(threads)]


def samples(folder: Path) -> dict:
    out = {}
    for line in (folder / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        out[s["doc_id"]] = (s["dynamax"]["token_ids"], s["dynamax"]["exit_layers"])
    return out


def recorded_cpu_seconds(workdir: Path, config: dict) -> float | None:
    """The job's CPU seconds from its rule's benchmark file, when present: results/eval/B/head~H/policy~P/task~T
    was benchmarked as results/benchmarks/evaluate/B/H/P/T.tsv (baseline/T, prune~N/T alike)."""
    parts = Path(config["out_dir"]).parts[2:]  # after results/eval
    name = "/".join(p.split("~", 1)[1] if p.split("~")[0] in ("head", "policy", "task") else p for p in parts)
    tsv = workdir / "results/benchmarks/evaluate" / f"{name}.tsv"
    if not tsv.is_file():
        return None
    header, row = tsv.read_text().splitlines()[:2]
    return float(dict(zip(header.split("\t"), row.split("\t")))["cpu_time"])


def run_job(workdir: Path, scratch: Path, key: str, job: dict, args) -> dict:
    out_dir = scratch / key
    cmd = [sys.executable, "-P", "-m", "workflow_lib.cli.evaluate", *argv(job["config"], out_dir, args.batch_size, args.threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # with -P: this checkout's code, not a copy in the pipeline folder
    start = time.perf_counter()
    with open(scratch / f"{key}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this process's own CPU time, whatever runs beside it
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode != 0:
        raise SystemExit(f"{key}: evaluate failed:\n{(scratch / f'{key}.log').read_text()[-3000:]}")
    points = []
    for point in job["points"]:
        old_dir, new_dir = workdir / job["config"]["out_dir"] / point, out_dir / point
        old, new = samples(old_dir), samples(new_dir)
        old_rec, new_rec = (json.loads((d / "record.json").read_text()) for d in (old_dir, new_dir))
        differing = sorted(d for d in old if old[d] != new.get(d))
        points.append({"job": key, "point": point, "n": len(old), "identical": len(old) - len(differing),
                       "differing_docs": differing, "metrics_before": old_rec["metrics"],
                       "metrics_after": new_rec["metrics"], "n_samples": old_rec["n_samples"]})
    return {"job": key, "wall_seconds": time.perf_counter() - start, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "recorded_cpu_seconds": recorded_cpu_seconds(workdir, job["config"]), "points": points}


def main() -> None:
    args = parse_args()
    workdir = args.workdir.resolve()
    found = {key: job for key, job in jobs(workdir).items() if args.match in key}
    if not found:
        raise SystemExit(f"no record.json under {workdir}/results/eval in a folder matching {args.match!r}")
    print(f"{len(found)} evaluation jobs, {sum(len(j['points']) for j in found.values())} grid points; "
          f"batch size {args.batch_size}, {args.jobs} at a time", flush=True)
    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda item: run_job(workdir, Path(scratch), item[0].replace("/", "_"), item[1], args),
                                found.items()))
    points = [p for r in results for p in r["points"]]
    generations = sum(p["n"] for p in points)
    identical = sum(p["identical"] for p in points)
    for p in points:
        if p["identical"] < p["n"] or p["metrics_before"] != p["metrics_after"]:
            print(f"{p['job']}/{p['point']}: {p['identical']}/{p['n']} identical, docs {p['differing_docs']}, "
                  f"metrics {p['metrics_before']} -> {p['metrics_after']}")
    recorded = [r["recorded_cpu_seconds"] for r in results]
    summary = {"jobs": len(results), "points": len(points), "generations": generations, "identical": identical,
               "identical_share": identical / generations,
               "points_with_changed_metrics": sum(p["metrics_before"] != p["metrics_after"] for p in points),
               "cpu_seconds_batched": sum(r["cpu_seconds"] for r in results),
               "wall_seconds_batched": sum(r["wall_seconds"] for r in results),
               "cpu_seconds_recorded": sum(recorded) if all(x is not None for x in recorded) else None}
    print(json.dumps(summary, indent=2))
    save(args.out, "batch_identity", args, results, summary=summary)


if __name__ == "__main__":
    main()
