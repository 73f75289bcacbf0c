"""predict's check that an ingested folder was brought into the grading model's template."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from omegaconf import OmegaConf

from gliograde.inference.ingested import TemplateCheck

CONTRACT = {"modalities": ["flair", "t1", "t1ce", "t2"], "naming": {}}


def _record(fingerprint: str | None) -> dict:
    template = {"folder": "/runs/a/template"} | ({"fingerprint": fingerprint} if fingerprint else {})
    return {"qc": {"passed": True, "failed": []}, "template": template}


def _plan(fingerprint: str) -> SimpleNamespace:
    space = SimpleNamespace(template=SimpleNamespace(fingerprint=fingerprint), template_source="/runs/b/template")
    return SimpleNamespace(space=space)


def test_the_same_template_passes_and_another_is_flagged_with_its_origin():
    check = TemplateCheck(OmegaConf.create({"ckpt": "/runs/b"}), CONTRACT, _plan("abc"))
    assert check.checked(_record("abc")) == _record("abc")
    flagged = check.checked(_record("xyz"))
    assert not flagged["qc"]["passed"]
    (why,) = flagged["qc"]["failed"]
    assert why.startswith("template: ingested into /runs/a/template, not this model's template (/runs/b/template)")
    assert check.checked(None) is None  # not an ingested folder: nothing to check


def test_a_record_without_a_fingerprint_is_flagged_to_be_ingested_again():
    check = TemplateCheck(OmegaConf.create({"ckpt": "/runs/b"}), CONTRACT, _plan("abc"))
    (why,) = check.checked(_record(None))["qc"]["failed"]
    assert "before templates were fingerprinted" in why and "ingest again" in why


def test_a_model_without_a_template_grades_and_says_so(tmp_path, caplog):
    cfg = OmegaConf.create({"ckpt": str(tmp_path / "model.ckpt"), "ingest": {"template": None}})
    check = TemplateCheck(cfg, CONTRACT)
    with caplog.at_level(logging.WARNING):
        assert check.checked(_record("xyz")) == _record("xyz")
        assert check.checked(_record("xyz")) == _record("xyz")
    warnings = [r for r in caplog.records if "without checking their template" in r.getMessage()]
    assert len(warnings) == 1  # said once, not once per patient
