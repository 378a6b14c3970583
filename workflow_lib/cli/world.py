"""Entry point: write the synthetic world (training corpus + TriviaQA / CoQA / TruthfulQA sets + world.json).

    python -m workflow_lib.cli.world --out-dir results/world --seed 0 [--n-people 200 ...]
    python -m workflow_lib.cli.world --coqa-calibration results/calibration/pool/coqa.jsonl --stories 60 --seed 0 [...]

Every WorldConfig field is a flag (dashes for underscores); the same seed and flags give byte-identical files.
--coqa-calibration writes, instead of the world, that many more CoQA stories of the same world apart from the
evaluated ones (calibrated thresholds need questions the evaluation does not use); the world's files are unchanged.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from workflow_lib.data import formats
from workflow_lib.data.world import ATTRIBUTES, WorldConfig, build_world, coqa_calibration_records, write_world
from workflow_lib.defaults import SEED


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.world", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out-dir", help="output folder (replaced atomically)")
    out.add_argument("--coqa-calibration", metavar="FILE", help="write CoQA calibration stories here instead (.jsonl)")
    p.add_argument("--stories", type=int, help="with --coqa-calibration: how many")
    p.add_argument("--seed", type=int, default=SEED)
    hints = typing.get_type_hints(WorldConfig)
    for f in dataclasses.fields(WorldConfig):
        flag, kind = "--" + f.name.replace("_", "-"), hints[f.name]
        if f.name == "attributes":
            p.add_argument(flag, nargs="+", choices=sorted(ATTRIBUTES), default=list(f.default),
                           help=f"attributes of each person (default: {' '.join(f.default)})")
        elif f.name == "qa_per_doc":
            p.add_argument(flag, nargs=2, type=int, default=list(f.default), metavar=("MIN", "MAX"),
                           help=f"questions per QA document (default: {f.default})")
        else:
            p.add_argument(flag, type=kind, default=f.default, help=f"(default: {f.default})")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if (args.coqa_calibration is None) != (args.stories is None):
        p.error("--coqa-calibration and --stories go together")
    if args.stories is not None and args.stories < 1:
        p.error("--stories must be >= 1")
    return args


def main(argv=None) -> None:
    args = vars(parse_args(argv))
    out_dir, seed = args.pop("out_dir"), args.pop("seed")
    calibration, stories = args.pop("coqa_calibration"), args.pop("stories")
    config = WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    if calibration is not None:
        formats.write_coqa(calibration, coqa_calibration_records(build_world(seed, config), stories))
        print(f"world seed {seed}: {stories} CoQA calibration stories -> {calibration}")
        return
    meta = write_world(out_dir, seed, config)
    sizes = ", ".join(f"{name} {info['bytes']:,} B" for name, info in meta["files"].items())
    print(f"world seed {seed}: {meta['n_people']} people, {meta['n_facts']} facts "
          f"({meta['n_held_out']} held out) -> {out_dir}: {sizes}")


if __name__ == "__main__":
    main()
