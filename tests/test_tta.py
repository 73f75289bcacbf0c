"""Test-time augmentation: the views, their average, and evaluate.py's slice probabilities with
tta=none (the model's own outputs, unchanged) and tta=flip (checked by hand against the model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.runs import tiny_run
from omegaconf import OmegaConf

from gliograde.errors import ConfigError
from gliograde.evaluation import inputs
from gliograde.evaluation.predict import predict
from gliograde.inference.models import find_checkpoint
from gliograde.inference.tta import check_tta, n_views, views
from gliograde.models.patient_scores import slice_log_probs


def test_views_are_the_identity_the_mirror_and_the_dihedral_group():
    image = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3)
    assert len(views(image, "none")) == n_views("none") == 1 and torch.equal(views(image, "none")[0], image)
    same, mirror = views(image, "flip")
    assert torch.equal(same, image) and torch.equal(mirror, image[..., ::1].flip(-1))
    assert torch.equal(mirror[0, 0, 0], torch.tensor([2.0, 1.0, 0.0]))  # left-right: the last axis
    group = views(image, "flip_rot")
    assert len(group) == n_views("flip_rot") == 8
    assert len({tuple(v.flatten().tolist()) for v in group}) == 8  # eight different views
    assert any(torch.equal(v, image.transpose(-2, -1)) for v in group)  # the diagonal mirror too
    for torch_view, numpy_view in zip(group, views(image.numpy(), "flip_rot")):
        assert np.array_equal(torch_view.numpy(), numpy_view)


def test_rotations_of_slices_that_are_not_square_are_refused():
    with pytest.raises(ConfigError, match="tta=flip_rot .* 4x6: use tta=flip"):
        views(torch.zeros(1, 1, 4, 6), "flip_rot")
    assert len(views(torch.zeros(1, 1, 4, 6), "flip")) == 2
    with pytest.raises(ConfigError, match="tta='rot' must be one of"):
        check_tta("rot", 4, 4)


def test_the_average_is_of_probabilities_at_the_temperature():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 4.0]]])  # one slice, two views
    expected = (torch.tensor([2.0, 0.0]).softmax(0) + torch.tensor([0.0, 4.0]).softmax(0)) / 2
    assert np.allclose(np.exp(slice_log_probs(logits.numpy()))[0], expected.numpy())
    halved = (torch.tensor([1.0, 0.0]).softmax(0) + torch.tensor([0.0, 2.0]).softmax(0)) / 2
    assert np.allclose(np.exp(slice_log_probs(logits.numpy(), 2.0)), halved.numpy()[None])


@pytest.mark.slow
def test_evaluation_probabilities_with_and_without_flips(tmp_path_factory):
    run = tiny_run(tmp_path_factory)["run"]
    run_cfg = OmegaConf.load(run / "config.yaml")
    checkpoint = find_checkpoint(run)
    model = inputs.load_model(checkpoint, inputs.load_contract(checkpoint, run_cfg), torch.device("cpu"))
    datamodule = inputs.run_datamodule(run_cfg)
    plain = predict(model, datamodule, "test", "mean", torch.device("cpu"), False)
    flipped = predict(model, datamodule, "test", "mean", torch.device("cpu"), False, tta="flip")

    # tta=none: the model's softmax, batch by batch, taken in float64 from its logits
    expected = []
    with torch.no_grad():
        for batch in datamodule.dataloader("test"):
            expected.append(model(batch["image"].float()).float().double().softmax(dim=1).numpy())
    assert np.allclose(plain.probs, np.concatenate(expected), rtol=0, atol=1e-12)
    assert plain.logits.shape == (len(plain.probs), 1, 2) and flipped.logits.shape == (len(plain.probs), 2, 2)

    # tta=flip: one slice by hand, the mean of the model on it and on its left-right mirror
    image = datamodule.datasets["test"][0]["image"].float()[None]
    with torch.no_grad():
        by_hand = (model(image).softmax(1) + model(torch.flip(image, dims=[3])).softmax(1)) / 2
    assert np.allclose(flipped.probs[0], by_hand[0].numpy(), atol=1e-6)
    assert not np.allclose(flipped.probs, plain.probs, atol=1e-6)  # the mirror changes something
    group = predict(model, datamodule, "test", "mean", torch.device("cpu"), False, tta="flip_rot")
    assert group.logits.shape == (len(plain.probs), 8, 2)
    assert np.allclose(group.logits[:, :2], flipped.logits, atol=1e-5)  # identity and mirror come first
    # per slice before aggregation: each patient's probability is the mean of its averaged slices
    first = flipped.slice_patient == 0
    assert np.allclose(flipped.patient_probs[0], flipped.probs[first].mean(axis=0))
