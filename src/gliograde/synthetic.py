"""Command line: write a synthetic BraTS-2020-layout cohort.

``python -m gliograde.synthetic OUT --patients N [--seed S] [--shape X Y Z] [--lgg-fraction F]
[--difficulty D]``; every default is the ``data=synthetic`` preset's, so
``python train.py data.root=OUT`` plus the printed overrides trains on the cohort.
"""

from __future__ import annotations

import argparse
import shlex
import time
from collections import Counter
from pathlib import Path

from gliograde.errors import exit_on_user_error
from gliograde.data.synthetic.generator import MAPPING_FILE, generate_cohort
from gliograde.data.synthetic.settings import (
    DEFAULT_DIFFICULTY,
    DEFAULT_LGG_FRACTION,
    DEFAULT_SEED,
    DEFAULT_SHAPE,
    generation_settings,
    train_overrides,
)
from gliograde.files.tables import read_table


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m gliograde.synthetic``."""
    parser = argparse.ArgumentParser(
        prog="python -m gliograde.synthetic",
        description="Write a synthetic glioma cohort in the BraTS 2020 training layout "
        "(gzip-compressed NIfTI volumes per patient plus name_mapping.csv).",
    )
    parser.add_argument("out", type=Path, help="folder to create (must not exist or be empty)")
    parser.add_argument("--patients", type=int, required=True, help="number of patients")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        default=DEFAULT_SHAPE,
        help="volume shape in voxels (default: %(default)s)",
    )
    parser.add_argument(
        "--lgg-fraction",
        type=float,
        default=DEFAULT_LGG_FRACTION,
        help="fraction of LGG patients (default: 76/369, as in BraTS 2020)",
    )
    parser.add_argument(
        "--difficulty",
        type=float,
        default=DEFAULT_DIFFICULTY,
        help="overlap of the grade cues, 0 (cleanly separable) to 1 (chance) (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    with exit_on_user_error():
        out = generate_cohort(
            args.out,
            patients=args.patients,
            seed=args.seed,
            shape=tuple(args.shape),
            lgg_fraction=args.lgg_fraction,
            difficulty=args.difficulty,
            progress=True,
        )
    seconds = time.perf_counter() - start
    grades = Counter(read_table(out / MAPPING_FILE)["Grade"])
    print(
        f"synthetic cohort: {args.patients} patients ({grades['HGG']} HGG, {grades['LGG']} LGG) "
        f"written to {out} in {seconds:.1f} s"
    )
    command = ["python train.py", f"data.root={out}", *train_overrides(generation_settings(out))]
    command = command[:1] + [shlex.quote(part) for part in command[1:]]
    print(f"train on it: {' '.join(command)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
