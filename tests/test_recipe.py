"""A run's inference recipe (RUN/recipe.json) and sealed records: what predict.py applies by
default, which options are refused as contradicting it, which evaluations record one, when an
export is stale, and that an edited or unreadable record is refused in one line. No model is
trained: a checkpoint here is only bytes with a SHA-256."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers.configs import compose_config

from gliograde.errors import ConfigError
from gliograde.inference.calibration import file_sha256, read_calibration, write_calibration
from gliograde.inference.models import ModelSourceError, read_card
from gliograde.inference.recipe import RecipeError, chooses_recipe, read_recipe
from gliograde.inference.recipe_record import record_recipe
from gliograde.inference.export_staleness import export_staleness
from gliograde.inference.recipe_choice import check_predict_options, resolve
from gliograde.files.sealed import SealError, read_sealed, seal, write_sealed

CALIBRATION = {
    "method": "temperature",
    "temperature": 0.52,
    "tta": "flip",
    "aggregate": "mean",
    "val_patients": ["A", "B", "C", "D"],
    "nll_before": 0.9,
    "nll_after": 0.6,
}
OPTIONS = {"ckpt": "best", "tta": "flip", "aggregate": "mean", "calibration": "temperature", "threshold": "youden"}


@pytest.fixture
def run(tmp_path) -> Path:
    """A run directory whose checkpoint is a few bytes, with a recipe recorded as evaluate.py
    tta=flip calibration=temperature threshold=youden records it."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = run / "checkpoints" / "epoch_003.ckpt"
    checkpoint.write_bytes(b"weights of epoch 3")
    (run / "config.yaml").write_text("data: {}\n")
    fitted = write_calibration(run, {**CALIBRATION, "checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint)})
    record_recipe(run, checkpoint, OPTIONS, fitted, 0.43, "youden on 4 val patients", run / "eval" / "x", "python evaluate.py")
    return run


def _model(run: Path, checkpoint: str = "epoch_003.ckpt"):
    return SimpleNamespace(kind="checkpoint", run=run, path=run / "checkpoints" / checkpoint)


def _cfg(*overrides: str):
    cfg = compose_config("predict", ["ckpt=X", "input=Y", *overrides])
    check_predict_options(cfg)
    return cfg


def test_predict_follows_the_recipe_and_says_where_it_comes_from(run):
    applied = resolve(_model(run), _cfg())
    assert (applied.tta, applied.temperature, applied.threshold) == ("flip", 0.52, 0.43)
    assert applied.source == str(run / "recipe.json")
    entry = applied.report()
    assert entry["checkpoint"] == "checkpoints/epoch_003.ckpt" and entry["aggregate"] == "mean"
    assert entry["sources"]["temperature"].startswith(f"{run / 'calibration.json'}: fitted on 4 validation")
    assert entry["recipe_sha256"] == json.loads((run / "recipe.json").read_text())["sha256"]
    assert "tta=flip" in applied.line() and "temperature 0.5200" in applied.line()
    # options equal to the recipe's are fine
    assert resolve(_model(run), _cfg("tta=flip", "threshold=0.43")).threshold == 0.43


def test_without_a_recipe_the_defaults_and_options_apply(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "epoch_0.ckpt").write_bytes(b"w")
    applied = resolve(_model(run, "epoch_0.ckpt"), _cfg())
    assert (applied.tta, applied.temperature, applied.threshold) == ("none", None, 0.5)
    assert "has no recipe.json" in applied.source
    applied = resolve(_model(run, "epoch_0.ckpt"), _cfg("tta=flip_rot", "threshold=0.3"))
    assert (applied.tta, applied.threshold) == ("flip_rot", 0.3)


@pytest.mark.parametrize(
    "override, said, change",
    [
        ("tta=none", r"tta=none contradicts .*recipe.json \(tta=flip, from evaluate.py tta=flip\)", "threshold=youden"),
        ("threshold=0.5", r"threshold=0.5 contradicts .*recipe.json \(threshold=0.43, from youden", "threshold=0.5"),
        ("calibration=none", r"calibration=none contradicts .*recipe.json \(temperature 0.5200\)", "tta=flip"),
    ],
)
def test_an_option_that_contradicts_the_recipe_is_refused_with_the_ways_out(run, override, said, change):
    with pytest.raises(RecipeError, match=said) as refused:
        resolve(_model(run), _cfg(override))
    message = str(refused.value)
    assert "\n" not in message and message.endswith("or pass recipe=none")
    assert f"change the recipe with evaluate.py run_dir={run} " in message and change in message
    # recipe=none: the options as given, nothing from the recipe
    applied = resolve(_model(run), _cfg(override, "recipe=none"))
    assert applied.recipe is None and applied.source.startswith("recipe=none")
    assert applied.temperature is None


def test_another_checkpoint_than_the_recipes_is_refused(run):
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights of the last epoch")
    with pytest.raises(RecipeError, match=r"ckpt=.*last.ckpt contradicts .*recipe of checkpoints/epoch_003.ckpt"):
        resolve(_model(run, "last.ckpt"), _cfg())
    # the recipe's own checkpoint rewritten in place (a resumed run): refused too
    (run / "checkpoints" / "epoch_003.ckpt").write_bytes(b"other weights")
    with pytest.raises(RecipeError, match="epoch_003.ckpt: changed since .*recipe.json was recorded for it; re-run"):
        resolve(_model(run), _cfg())


def test_a_recipe_predict_cannot_apply_is_refused(run):
    path = run / "recipe.json"
    write_sealed(path, {**json.loads(path.read_text()), "aggregate": "tumor_weighted"})
    with pytest.raises(RecipeError, match="aggregate=tumor_weighted is not one predict.py applies"):
        resolve(_model(run), _cfg())


def test_an_edited_or_unreadable_recipe_is_one_line(run):
    path = run / "recipe.json"
    recipe = json.loads(path.read_text())
    path.write_text(json.dumps({**recipe, "temperature": 1.0}, indent=2))  # edited by hand
    with pytest.raises(SealError, match=rf"^{path}: its content does not match its sha256 .*re-run evaluate.py"):
        read_recipe(run)
    path.write_text(json.dumps(recipe)[:40])  # truncated
    with pytest.raises(SealError, match=rf"^{path}: not valid JSON \(JSONDecodeError\)"):
        read_recipe(run)
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(SealError, match="not valid JSON"):
        read_recipe(run)
    write_sealed(path, {**recipe, "threshold": 1.5})  # sealed, but not a recipe predict could use
    with pytest.raises(RecipeError, match=r"threshold=1.5 is not a probability"):
        read_recipe(run)
    path.unlink()  # a stored temperature left without its recipe
    with pytest.raises(RecipeError, match="calibration.json: a stored temperature without recipe.json"):
        read_recipe(run)


def test_a_stored_temperature_is_sealed_and_checked(run):
    path = run / "calibration.json"
    assert read_calibration(run)["temperature"] == 0.52
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "temperature": 1.0}))
    with pytest.raises(SealError, match=rf"^{path}: its content does not match its sha256.*refit"):
        read_calibration(run)
    path.write_text(json.dumps({k: v for k, v in stored.items() if k != "sha256"}))  # an older record
    with pytest.raises(SealError, match="has no sha256 of its content"):
        read_calibration(run)
    path.write_text("{")
    with pytest.raises(SealError, match=r"not valid JSON"):
        read_calibration(run)


def test_which_evaluations_record_the_recipe():
    plain = {"ckpt": "best", "tta": "none", "aggregate": "mean", "calibration": "none", "threshold": 0.5}
    assert not chooses_recipe(plain)  # another cohort, another split: the recipe stays
    assert chooses_recipe({**plain, "tta": "flip"}) and chooses_recipe({**plain, "threshold": "youden"})
    assert chooses_recipe({**plain, "calibration": "temperature"}) and chooses_recipe({**plain, "threshold": 0.3})
    # predict.py averages slices: an evaluation with hard votes is not how it can apply the model
    assert not chooses_recipe({**plain, "aggregate": "vote", "threshold": "youden"})


def _card(run: Path, recipe: dict | None) -> Path:
    folder = run / "export"
    folder.mkdir(exist_ok=True)
    sha = file_sha256(run / "checkpoints" / "epoch_003.ckpt")
    card = {"input_contract": {}, "model": {"onnx": {}, "checkpoint_sha256": sha}, "recipe": recipe}
    write_sealed(folder / "model_card.json", card)
    return folder


def test_an_export_older_than_the_recipe_is_stale(run, capsys):
    recipe = json.loads((run / "recipe.json").read_text())
    folder = _card(run, None)  # exported before the calibration
    stale = export_staleness(folder, run)
    assert stale.startswith(f"{folder} is stale: it applies tta=none, aggregate=mean, temperature none")
    assert "says tta=flip, aggregate=mean, temperature 0.5200, threshold 0.43" in stale
    assert stale.endswith(f"re-export it (python -m gliograde.export {run})")
    # the predict.py of the run itself names its stale export too
    assert resolve(_model(run), _cfg()).stale_export == stale

    _card(run, recipe)
    assert export_staleness(folder, run) is None
    # the same recipe recorded again (a later time, the same values): still current
    checkpoint = run / "checkpoints" / "epoch_003.ckpt"
    fitted = read_calibration(run)
    record_recipe(run, checkpoint, OPTIONS, fitted, 0.43, "youden again", run / "eval" / "y", "python evaluate.py")
    assert json.loads((run / "recipe.json").read_text())["updated"] and export_staleness(folder, run) is None
    assert "Note:" not in capsys.readouterr().out
    # a new threshold: evaluate.py says what it replaces and that the export is now stale
    record_recipe(run, checkpoint, {**OPTIONS, "threshold": 0.3}, fitted, 0.3, "evaluate.py threshold=0.3", run, "c")
    printed = capsys.readouterr().out
    assert "It replaces: checkpoints/epoch_003.ckpt, tta=flip, aggregate=mean, temperature 0.5200, threshold 0.43" in printed
    assert f"Note: {folder} is stale:" in printed and "threshold 0.3" in printed


def test_an_edited_model_card_is_refused(run):
    folder = _card(run, None)
    card = json.loads((folder / "model_card.json").read_text())
    assert read_card(folder) == card
    card["input_contract"] = {"modalities": ["t2", "t1", "t1ce", "flair"]}  # channels in another order
    (folder / "model_card.json").write_text(json.dumps(card, indent=2))
    with pytest.raises(SealError, match="model_card.json: its content does not match its sha256.*re-export"):
        read_card(folder)
    write_sealed(folder / "model_card.json", {"model": {}})
    with pytest.raises(ModelSourceError, match="not a model card"):
        read_card(folder)


def test_sealing_is_over_the_content_whatever_its_layout(tmp_path):
    record = {"b": [1, 2.5], "a": {"x": None}}
    sealed = seal(record)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(sealed))  # one line, other key order: the same content
    assert read_sealed(path, "fix it") == sealed
    assert seal({**sealed, "b": [1, 2.5]}) == sealed  # resealing replaces the seal, never nests it
    path.write_text("[1, 2]")
    with pytest.raises(SealError, match="not a JSON object; fix it"):
        read_sealed(path, "fix it")


def test_malformed_predict_options_are_refused_before_any_work():
    with pytest.raises(ConfigError, match="recipe='latest' must be one of"):
        _cfg("recipe=latest")
    with pytest.raises(ConfigError, match=r"threshold=1.5 must be a probability"):
        _cfg("threshold=1.5")
    with pytest.raises(ConfigError, match="tta='rot' must be one of"):
        _cfg("tta=rot")
    with pytest.raises(ConfigError, match="calibration='yes' must be one of"):
        _cfg("calibration=yes")
