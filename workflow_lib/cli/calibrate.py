"""Calibrated exit thresholds: Learn-then-Test on a calibration set, then the calibrated points on the evaluation set.

    python -m workflow_lib.cli.calibrate --backbone B --heads DIR --policy copy --task triviaqa --data EVAL.jsonl \
        --limit 24 --calibration-data CAL.jsonl --reference REF_DIR --thresholds 0.99,0.9,0.8 --deltas 0.05,0.1 \
        --epsilon 0.05 --calibration-out calibration.json --out-dir CELL

For one (backbone, heads, policy, task), each delta gets the lowest threshold of the grid whose risk is <= delta
with probability >= 1 - epsilon (evaluation/ltt.py: fixed-sequence testing from the highest threshold down, the
calibration set decoded at each threshold only while some delta is still being tested). The risk (--risk):
  consistency  CALM's sequence-level textual consistency with the full model: a question's loss is 1 when its
               generation at the threshold, stripped, differs from the full model's, else 0
  metric       the drop of the task's metric (--metric, default its headline one) against the full model on that
               question, max(0, full - early), in [0, 1] (0/1 for exact match; hoeffding_bentkus for F1)
The full model's answers on the calibration set come from --reference, the folder `evaluate --no-heads` wrote on
the same calibration data with the same settings (checked), so every head, policy and emission rule shares one such
run (exits off, every rule is the full model). --emission / --translators as for evaluate: the heads should be
the ones trained for that rule.

Outputs:
  --calibration-out       JSON: per delta the chosen threshold (null: none certified) and every test run
  --out-dir/calibrated~D/ per delta D (as spelled), the calibrated point on the evaluation set (record.json +
                          samples.jsonl with the calibration in the record), evaluated like any grid point; with no
                          certified threshold the exits stay off (the full model)
Checked before the model loads: the calibration set shares no question with the evaluated ones (--data with --limit
and --triviaqa-n), the reference matches, the files' formats.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from workflow_lib.arguments import add_task_arguments, check_task_arguments, model_options, number_list
from workflow_lib.choices import BOUNDS, RISKS
from workflow_lib.defaults import CALIBRATION, EXITS_OFF
from workflow_lib.evaluation.ltt import learn_then_test
from workflow_lib.evaluation.points import MAIN, load_model, run_point, save_point
from workflow_lib.evaluation.records import RECORD, SAMPLES
from workflow_lib.evaluation.tasks import TASKS, check_task_data, load_task

# The reference must have decoded the calibration set exactly as the calibration does (evaluate's option names).
REFERENCE_SETTINGS = ("backbone", "tokenizer", "task", "fewshot_data", "triviaqa_n", "shots", "max_new_tokens",
                      "repetition_penalty", "seed", "dtype")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_arguments(p)
    p.add_argument("--heads", required=True, help="folder of exit heads (save_heads; an untrained head too)")
    p.add_argument("--calibration-data", required=True, help="calibration questions (calibration_split), in the "
                                                             "task's format")
    p.add_argument("--reference", required=True, type=Path, help="evaluate --no-heads output folder on "
                                                                 "--calibration-data (the full model's answers)")
    p.add_argument("--thresholds", required=True, type=number_list, help="the grid, tested from the highest down")
    p.add_argument("--deltas", required=True, type=number_list, help="risk levels in (0, 1), e.g. 0.05,0.1")
    p.add_argument("--epsilon", type=float, default=CALIBRATION["epsilon"],
                   help=f"the guarantee fails with probability <= epsilon (default {CALIBRATION['epsilon']})")
    p.add_argument("--risk", choices=RISKS, default=CALIBRATION["risk"])
    p.add_argument("--metric", default=CALIBRATION["metric"],
                   help="--risk metric: the per-question metric (default: the task's headline metric)")
    p.add_argument("--bound", choices=BOUNDS, default=CALIBRATION["bound"],
                   help="p-values: binomial (0/1 losses) or hoeffding_bentkus (any loss in [0, 1])")
    p.add_argument("--calibration-out", required=True, type=Path, help="the calibration's JSON")
    p.add_argument("--out-dir", required=True, type=Path, help="folder of the calibrated~D/ points")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    check_task_arguments(p, args)
    if any(t > 1 for _, t in args.thresholds):
        p.error("--thresholds must lie in [0, 1] (above 1 the exits are off)")
    if any(not 0 < d < 1 for _, d in args.deltas):
        p.error("--deltas must lie in (0, 1)")
    if not 0 < args.epsilon < 1:
        p.error("--epsilon must lie in (0, 1)")
    if args.risk == "consistency" and args.metric:
        p.error("--metric is for --risk metric")
    for flag, path in (("--calibration-data", args.calibration_data), ("--reference", args.reference / RECORD),
                       ("--reference", args.reference / SAMPLES)):
        if not Path(path).is_file():
            p.error(f"{flag}: file not found: {path}")
    return args


def check_calibration_set(task: str, data: str, limit: int | None, triviaqa_n: int, calibration_data: str) -> None:
    """The calibration questions must be none of the evaluated ones (else the guarantee says nothing of them)."""
    from workflow_lib.data.calibration import check_disjoint, evaluated_records
    from workflow_lib.data.formats import LOADERS

    loader = LOADERS[task]
    evaluated = evaluated_records(task, loader(data), limit, triviaqa_n)
    check_disjoint(task, loader(calibration_data), evaluated)


def read_reference(reference: Path, config: dict, calibration_data: str) -> list[dict]:
    """The full model's samples on the calibration set, after checking they were made on it with these settings
    (`config`: this job's options)."""
    made = json.loads((reference / RECORD).read_text()).get("provenance", {}).get("config") or {}
    wanted = {**{k: config[k] for k in REFERENCE_SETTINGS}, "data": str(calibration_data), "limit": None,
              "no_heads": True, "prune": 0}
    differ = sorted(k for k, v in wanted.items() if made.get(k) != v)
    if differ:
        raise ValueError(f"--reference {reference} was not made on --calibration-data with these settings "
                         f"({', '.join(f'{k}: {made.get(k)!r} there, {wanted[k]!r} here' for k in differ)})")
    return [json.loads(line) for line in (reference / SAMPLES).read_text(encoding="utf-8").splitlines()]


def answer(sample: dict) -> str:
    """The generation as the model returned it (cut at the stop strings), stripped."""
    return sample["resps"][0][0].strip()


def losses(samples: list[dict], reference: dict[int, dict], risk: str, metric: str | None) -> list[float]:
    """One loss per calibration question, in the reference's order."""
    by_doc = {s["doc_id"]: s for s in samples}
    if by_doc.keys() != reference.keys():
        raise ValueError(f"the calibration run scored {len(by_doc)} questions, the reference {len(reference)}")
    if risk == "consistency":
        return [float(answer(by_doc[d]) != answer(ref)) for d, ref in reference.items()]
    values = [(float(by_doc[d][metric]), float(ref[metric])) for d, ref in reference.items()]
    if any(not 0 <= v <= 1 for pair in values for v in pair):
        raise ValueError(f"metric {metric!r} leaves [0, 1]: its drop is no bounded loss")
    return [max(0.0, full - early) for early, full in values]


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    from workflow_lib.data.formats import DataFormatError

    try:
        check_task_data(args.task, args.data, args.fewshot_data, args.calibration_data)
        check_calibration_set(args.task, args.data, args.limit, args.triviaqa_n, args.calibration_data)
        reference = {s["doc_id"]: s for s in read_reference(args.reference, config, args.calibration_data)}
    except (DataFormatError, ValueError) as e:
        sys.exit(f"calibrate: error: {e}")
    metric = None
    if args.risk == "metric":
        from workflow_lib.analysis.tables import HEADLINE_METRICS

        metric = args.metric or HEADLINE_METRICS[args.task][0]
        if any(metric not in s for s in reference.values()):
            sys.exit(f"calibrate: error: the reference's samples have no per-question {metric!r}")

    from workflow_lib.artifacts import provenance, write_json
    from workflow_lib.evaluation.records import generation_summary

    try:
        lm = load_model(**model_options(args))
    except (ValueError, FileNotFoundError) as e:  # heads / translators for another backbone, unknown policy ...
        sys.exit(f"calibrate: error: {e}")
    calibration_task = load_task(args.task, args.calibration_data, args.triviaqa_n, args.fewshot_data)
    lm_task = TASKS[args.task][0]
    crf: dict[float, float] = {}
    # every threshold of the grid decoded from one prefill of each batch of calibration prompts: the prompts dominate
    # (a CoQA story is ~450 tokens, its answer ~7), so decoding the thresholds the test may not reach costs less
    lm.share([(MAIN, t) for _, t in args.thresholds])

    def losses_at(threshold: float) -> list[float]:
        lm.set_point(threshold)
        results, _ = run_point(lm, calibration_task, args.shots, args.max_new_tokens, args.seed, None)
        crf[threshold] = generation_summary(lm.generations, args.degenerate_limit)["crf_exact"]
        return losses(results["samples"][lm_task], reference, args.risk, metric)

    deltas = dict((d, spelled) for spelled, d in args.deltas)
    try:
        chosen = learn_then_test([t for _, t in args.thresholds], losses_at, list(deltas), args.epsilon, args.bound)
    except ValueError as e:  # a non-binary loss under the binomial bound, a reference that does not match
        sys.exit(f"calibrate: error: {e}")
    setup_seconds = time.perf_counter() - started
    evaluation_task = load_task(args.task, args.data, args.triviaqa_n, args.fewshot_data)
    points = list(dict.fromkeys(t for t, _ in chosen.values()))  # each distinct point once, from one prefill
    lm.share([(MAIN, t if t is not None else EXITS_OFF) for t in points])
    for threshold in points:
        lm.set_point(threshold if threshold is not None else EXITS_OFF)  # none certified: exits off
        results, wall = run_point(lm, evaluation_task, args.shots, args.max_new_tokens, args.seed, args.limit)
        for delta, (t, tests) in chosen.items():
            if t != threshold:
                continue
            last = next((x for x in reversed(tests) if x.rejected), None)
            calibration = {"delta": delta, "epsilon": args.epsilon, "risk": args.risk, "metric": metric,
                           "bound": args.bound, "n": len(reference), "certified": t is not None,
                           "calibration_risk": last.risk if last else None, "p_value": last.p_value if last else None}
            point = {"threshold": t, "prune": 0, "calibration": calibration, "setup_seconds": setup_seconds}
            save_point(args.out_dir / f"calibrated~{deltas[delta]}", lm, results, wall, point, args.task,
                       args.backbone, args.heads, args.degenerate_limit, config, args.seed)
    write_json(args.calibration_out, {
        "backbone": args.backbone, "heads": args.heads, "policy": lm.decoder.policy,
        "emission": lm.decoder.emission, "task": args.task,
        "calibration_data": args.calibration_data, "n": len(reference), "risk": args.risk, "metric": metric,
        "bound": args.bound, "epsilon": args.epsilon,
        "deltas": {deltas[d]: {"delta": d, "threshold": t,
                               "tests": [{**asdict(x), "crf_exact": crf[x.threshold]} for x in tests]}
                   for d, (t, tests) in chosen.items()},
        "provenance": provenance(config, args.seed)})
    print(json.dumps({deltas[d]: t for d, (t, _) in chosen.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
