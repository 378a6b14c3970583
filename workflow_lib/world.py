"""Entry point: write the synthetic world (training corpus + TriviaQA / CoQA / TruthfulQA sets + world.json).

    python -m workflow_lib.world --out-dir results/world --seed 0 [--n-people 200 ...]

Every WorldConfig field is a flag (dashes for underscores); the same seed and flags give byte-identical files.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from workflow_lib.data.world import ATTRIBUTES, WorldConfig, write_world


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.world", description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", required=True, help="output folder (replaced atomically)")
    p.add_argument("--seed", type=int, default=0)
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
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = vars(parse_args(argv))
    out_dir, seed = args.pop("out_dir"), args.pop("seed")
    config = WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    meta = write_world(out_dir, seed, config)
    sizes = ", ".join(f"{name} {info['bytes']:,} B" for name, info in meta["files"].items())
    print(f"world seed {seed}: {meta['n_people']} people, {meta['n_facts']} facts "
          f"({meta['n_held_out']} held out) -> {out_dir}: {sizes}")


if __name__ == "__main__":
    main()
