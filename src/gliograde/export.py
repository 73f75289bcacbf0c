"""Export a trained model to leave the lab: ``python -m gliograde.export RUN`` (or a checkpoint).

Writes ``RUN/export/``: ``model.onnx`` (slices ``[B, C, H, W]`` float32 to class probabilities,
dynamic batch), checked against the checkpoint under onnxruntime before anything is kept, and
a model card (``model_card.json``, sealed with a checksum of its own and of ``model.onnx``;
``MODEL_CARD.md``) with the input contract, intended use, training cohort, metrics with
intervals, the run's recipe (``RUN/recipe.json``: TTA, temperature, threshold, when it is the
recipe of this checkpoint) and the commands that made the run. The graph also outputs the
logits, which predict.py scales by the recipe's temperature.
``segmenter=SEG_RUN`` (or ``--segmenter``) bundles a tumour segmenter of a fitting contract:
``segmenter.onnx`` (slices to tumour probability, checked against its checkpoint likewise) and
a ``segmenter`` section of the same sealed card.
``predict.py ckpt=RUN/export`` runs the folder with onnxruntime alone; ``--check`` says whether
an export still applies its run's recipe (and its segmenter's checkpoint).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any


from gliograde.errors import GliogradeError, exit_on_user_error
from gliograde.inference.calibration import CALIBRATION_FILE, file_sha256, read_calibration
from gliograde.inference.models import (
    CARD_FILE,
    ONNX_FILE,
    ModelSourceError,
    TorchModel,
    find_checkpoint,
    read_card,
)
from gliograde.inference.recipe import RECIPE_FILE, RecipeError, describe, read_recipe, recipe_checkpoint, recipe_values
from gliograde.inference.export_staleness import export_staleness
from gliograde.contract.model_card import build_card, segmenter_section
from gliograde.contract.model_card_markdown import render_markdown
from gliograde.files.sealed import write_sealed
from gliograde.segmentation.onnx_segmenter import CARD_SECTION, SEGMENTER_ONNX_FILE
from gliograde.inference.onnx_export import _check_onnx, _check_segmenter_onnx, _write_onnx, _write_segmenter_onnx

TEMPLATE_SECTION = "template"


def export(source: str | Path, output: str | Path | None = None, segmenter: str | Path | None = None) -> Path:
    """Export the checkpoint (or a run's best) at ``source``, with the segmenter run or checkpoint
    ``segmenter`` bundled when given; return the export folder."""
    source = Path(source).expanduser()
    if source.is_dir():
        if not (source / "checkpoints").is_dir():
            raise ModelSourceError(
                f"{source}: not a run directory (no checkpoints/); pass RUN or RUN/checkpoints/X.ckpt"
            )
        run = source
        recipe = read_recipe(run)
        checkpoint = recipe_checkpoint(run, recipe) if recipe else find_checkpoint(run)
    elif source.is_file():
        checkpoint = source
        run = source.parent.parent if (source.parent.parent / "config.yaml").is_file() else None
        recipe = None if run is None else read_recipe(run)
    else:
        raise ModelSourceError(f"{source}: no such run directory or checkpoint")
    target = Path(output) if output else (run or checkpoint.parent) / "export"
    model = TorchModel(checkpoint)
    checkpoint_sha = file_sha256(checkpoint)
    if source.is_dir() and recipe and checkpoint_sha != recipe["checkpoint_sha256"]:
        # the recipe's own checkpoint, rewritten since: never a silent export without the recipe
        raise RecipeError(
            f"{checkpoint}: changed since {run / RECIPE_FILE} was recorded for it; re-run the evaluate.py "
            f"command of the recipe ({recipe.get('command')}), or export the file itself: "
            f"python -m gliograde.export {checkpoint}"
        )
    bundled = None if segmenter is None else _open_for_bundle(segmenter, model)
    recipe = _recipe(run, recipe, checkpoint_sha)
    calibration = _calibration(run, recipe)
    stale = export_staleness(target, run) if run is not None else None
    if stale:
        print(f"Replacing {stale.split('; re-export it')[0]}")
    previous = _bundled_before(target) if segmenter is None else None
    if previous:
        print(
            f"The new export bundles no segmenter (the one it replaces bundled {previous}; "
            "segmenter= keeps one)"
        )

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_onnx(model, tmp / ONNX_FILE)
        worst = _check_onnx(model, tmp / ONNX_FILE)
        digest = hashlib.sha256((tmp / ONNX_FILE).read_bytes()).hexdigest()
        card = build_card(
            model, checkpoint, run, calibration, recipe=recipe, onnx_sha256=digest, onnx_max_abs_diff=worst
        )
        card["model"]["checkpoint_sha256"] = checkpoint_sha
        if bundled is not None:
            seg_net, seg_sha = bundled
            _write_segmenter_onnx(seg_net, tmp / SEGMENTER_ONNX_FILE)
            seg_worst = _check_segmenter_onnx(seg_net, tmp / SEGMENTER_ONNX_FILE)
            seg_digest = hashlib.sha256((tmp / SEGMENTER_ONNX_FILE).read_bytes()).hexdigest()
            card[CARD_SECTION] = segmenter_section(seg_net, seg_sha, seg_digest, seg_worst)
        template = _bundle_template(run, tmp)
        if template is not None:
            card[TEMPLATE_SECTION] = template
        card = write_sealed(tmp / CARD_FILE, card)
        (tmp / "MODEL_CARD.md").write_text(render_markdown(card))
        _swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _bundle_template(run: Path | None, folder: Path) -> dict[str, Any] | None:
    """Copy the run's template (built from its training patients when it has none yet) into the
    export, for ``python -m gliograde.ingest``; None, and said, when it cannot be had."""
    from gliograde.ingest.target import TEMPLATE_FOLDER
    from gliograde.ingest.template import TEMPLATE_FILE, run_template, save_template

    if run is None:
        print("No template bundled (a checkpoint outside its run): ingestion with this export needs ingest.template=")
        return None
    try:
        template = run_template(run)
    except GliogradeError as err:
        print(f"No template bundled ({err}): ingestion with this export needs ingest.template=")
        return None
    save_template(template, folder / TEMPLATE_FOLDER)
    digest = file_sha256(folder / TEMPLATE_FOLDER / TEMPLATE_FILE)
    return {"folder": TEMPLATE_FOLDER, "record_sha256": digest, "patients": len(template.meta.get("patients", []))}


def _recipe(run: Path | None, recipe: dict[str, Any] | None, checkpoint_sha: str) -> dict[str, Any] | None:
    """The run's recipe when it is the exported checkpoint's; None (and said) otherwise: a recipe
    of another checkpoint is never carried along."""
    if recipe is None:
        print("No recipe to export: tta=none, no temperature, threshold 0.5")
        return None
    if recipe["checkpoint_sha256"] != checkpoint_sha:
        print(
            f"Not exporting {run / RECIPE_FILE}: it is the recipe of {recipe['checkpoint']}, not of this "
            "checkpoint; the export gets none (tta=none, no temperature, threshold 0.5)"
        )
        return None
    print(f"Exporting the recipe of {run / RECIPE_FILE}: {describe(recipe_values(recipe, checkpoint_sha))}")
    return recipe


def _calibration(run: Path | None, recipe: dict[str, Any] | None) -> dict[str, Any] | None:
    """The stored temperature's record (``RUN/calibration.json``) behind the recipe's temperature,
    for the card; it must be the very fit the recipe names."""
    if recipe is None or recipe["temperature"] is None:
        return None
    record = read_calibration(run)
    fits = record is not None and all(
        record.get(key) == recipe[key] for key in ("temperature", "checkpoint_sha256", "tta", "aggregate")
    )
    if not fits:
        raise RecipeError(
            f"{run / RECIPE_FILE}: its temperature is not the one in {run / CALIBRATION_FILE}; re-run "
            f"evaluate.py run_dir={run} calibration=temperature (with the recipe's tta) to record both again"
        )
    return record


def _open_for_bundle(source: str | Path, model: TorchModel):
    """The segmenter checkpoint at ``source`` (a segmenter run or .ckpt) and its sha256, refused
    in one line when it is not one, is damaged, or does not fit the classifier's contract."""
    from gliograde.segmentation.inference import check_compatible, open_segmenter
    from gliograde.segmentation.volume import SegmenterError

    if not str(source).strip():
        raise SegmenterError("segmenter= needs a segmenter run directory or checkpoint (task=segment)")
    path = Path(source).expanduser()
    if path.is_dir() and (path / CARD_FILE).is_file():
        raise SegmenterError(
            f"segmenter={source} is an export folder; bundle the segmenter run it came from (or its .ckpt)"
        )
    segmenter = open_segmenter(path, device="cpu")
    check_compatible(segmenter.contract, model.contract, f"segmenter={source}")
    return segmenter, file_sha256(segmenter.path)


def _bundled_before(target: Path) -> str | None:
    """The segmenter run (or checkpoint) the export at ``target`` bundles, if any is readable."""
    try:
        section = read_card(target).get(CARD_SECTION) if (target / CARD_FILE).is_file() else None
    except GliogradeError:
        return None
    return (section.get("run_dir") or section.get("checkpoint")) if section else None


def _swap_in(new: Path, target: Path) -> None:
    """Replace ``target`` by the complete folder ``new``; a reader never sees a partial export."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gliograde.export", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="run directory (its best checkpoint) or checkpoint file")
    parser.add_argument("--output", help="export folder (default: RUN/export)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="export nothing: say whether the export still applies the run's recipe (exit 1 when stale)",
    )
    parser.add_argument(
        "--segmenter",
        metavar="SEG",
        help="bundle this segmenter (a task=segment run directory or its .ckpt); also segmenter=SEG",
    )
    args = parser.parse_args(_segmenter_token(sys.argv[1:] if argv is None else argv))
    with exit_on_user_error():
        if args.check:
            sys.exit(check(args.source, args.output))
        folder = export(args.source, args.output, args.segmenter)
    print(f"Exported to {folder}")


def _segmenter_token(argv: list[str]) -> list[str]:
    """``segmenter=SEG`` (as evaluate.py and predict.py spell it) as ``--segmenter SEG``."""
    out: list[str] = []
    for token in argv:
        if token.startswith("segmenter="):
            out += ["--segmenter", token[len("segmenter=") :]]
        else:
            out.append(token)
    return out


def check(run: str | Path, output: str | Path | None = None) -> int:
    """Print whether ``RUN/export`` (or ``output``) applies the run's current recipe: 0 when it
    does, 1 when it is stale."""
    run = Path(run).expanduser()
    if not (run / "checkpoints").is_dir():
        raise ModelSourceError(f"{run}: not a run directory (no checkpoints/); --check takes RUN")
    folder = Path(output) if output else run / "export"
    if not (folder / CARD_FILE).is_file():
        raise ModelSourceError(
            f"{folder}: no export to check (no {CARD_FILE}); python -m gliograde.export {run} makes one"
        )
    stale = export_staleness(folder, run) or segmenter_staleness(folder, run)
    if stale:
        print(stale)
        return 1
    bundled = " and bundles its segmenter checkpoint as it is" if read_card(folder).get(CARD_SECTION) else ""
    print(f"{folder} applies the run's current recipe{bundled}")
    return 0


def segmenter_staleness(folder: Path, run: Path) -> str | None:
    """Why the segmenter bundled in the export ``folder`` is no longer its checkpoint's (gone or
    rewritten since export); None when it still is, or when none is bundled."""
    section = read_card(folder).get(CARD_SECTION)
    if not section:
        return None
    checkpoint = Path(section["checkpoint"])
    redo = f"re-export it (python -m gliograde.export {run} segmenter={section.get('run_dir') or checkpoint})"
    if not checkpoint.is_file():
        return f"{folder} is stale: its segmenter's checkpoint {checkpoint} is gone; {redo}"
    if file_sha256(checkpoint) != section["checkpoint_sha256"]:
        return f"{folder} is stale: its segmenter's checkpoint {checkpoint} changed since export; {redo}"
    return None


if __name__ == "__main__":
    main(sys.argv[1:])
