"""``python -m gliograde.clean [--yes]``: what runs left in the repository's ``logs/`` and
``outputs/``, and with ``--yes`` their removal.

Nothing outside those two folders is ever removed: a folder that is a symbolic link is refused,
and links inside them are removed as links, never followed. While a training writes in one
(each training holds a lock in its run directory until it ends), nothing is removed. Runs with
the standard library alone, so ``make clean`` needs no installed environment.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from gliograde.errors import GliogradeError, exit_on_user_error
from gliograde.training.run_lock import busy_runs

PLACES = ("logs", "outputs")


class CleanError(GliogradeError):
    """The folders cannot be removed safely."""


def disk_usage(place: Path) -> int:
    """Bytes on disk below ``place``, each file once however many names it has (hard links)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, dirs, files in os.walk(place):
        for name in dirs + files:
            info = os.lstat(os.path.join(folder, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def size_text(size: int) -> str:
    """``size`` bytes in the unit that reads best: kB, MB up to a GB, GB."""
    if size >= 1e9:
        return f"{size / 1e9:.2f} GB"
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


def _count(place: Path) -> str:
    runs = sorted(place.glob("*/runs/*"))
    sweeps = sorted(place.glob("*/multiruns/*"))
    parts = [f"{len(runs)} run{'s' * (len(runs) != 1)}"] if runs else []
    parts += [f"{len(sweeps)} sweep{'s' * (len(sweeps) != 1)}"] if sweeps else []
    return f" ({', '.join(parts)})" if parts else ""


def places(root: Path) -> list[Path]:
    """The folders to remove under ``root`` (those present), after the checks that keep the
    removal inside them: ``root`` is the repository, no folder is a link or a file."""
    if not (root / "conf" / "train.yaml").is_file():
        raise CleanError(
            f"{root.resolve()}: not the gliograde repository (no conf/train.yaml); run it from there"
        )
    found = []
    for name in PLACES:
        place = root / name
        if place.is_symlink():
            raise CleanError(
                f"{place}: a symbolic link to {os.readlink(place)}; clean removes nothing outside the "
                f"repository: remove the link (rm {place}) or what it points to yourself"
            )
        if place.exists() and not place.is_dir():
            raise CleanError(f"{place}: a file, not a folder of runs; move or remove it yourself")
        if place.is_dir():
            found.append(place)
        leftovers = sorted(root.glob(f".{name}.removing-*"))  # a removal that was interrupted
        found += [p for p in leftovers if p.is_dir() and not p.is_symlink()]
    return found


def clean(root: Path, remove: bool) -> str:
    """What is (with ``remove``: was) removed under ``root``, as lines for the terminal."""
    found = places(root)
    if not found:
        return f"Nothing to remove: {', '.join(f'{p}/' for p in PLACES)} absent in {root.resolve()}"
    busy = [run for place in found for run in busy_runs(place)]
    if busy:
        names = ", ".join(str(run) for run in busy[:3]) + (
            f" and {len(busy) - 3} more" if len(busy) > 3 else ""
        )
        raise CleanError(
            f"a training is still writing in {names}; stop it or let it finish, then clean again"
        )
    sizes = {place: disk_usage(place) for place in found}
    total = size_text(sum(sizes.values()))
    lines = [f"{'Removed' if remove else 'Would remove'} {total} in all:"]
    lines += [f"  {place}/  {size_text(size)}{_count(place)}" for place, size in sizes.items()]
    if not remove:
        lines.append(
            "Nothing removed yet: `make clean YES=1` (python -m gliograde.clean --yes) removes them."
        )
        return "\n".join(lines)
    for place in found:
        doomed = place
        if not place.name.startswith("."):  # out of the runs' way first, so a new run starts afresh
            doomed = place.with_name(f".{place.name}.removing-{os.getpid()}")
            os.rename(place, doomed)
        shutil.rmtree(doomed)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gliograde.clean", description=__doc__.splitlines()[0])
    parser.add_argument("--yes", action="store_true", help="remove them (without it, only say what would go)")
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository (default: here)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        print(clean(args.root, remove=args.yes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
