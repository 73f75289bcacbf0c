"""``python -m gliograde.ingest SRC OUT model=RUN [ingest.*=...] [files.<modality>=GLOB] [on_error=skip]``

Turns each patient of SRC (DICOM files in any nesting, or NIfTI files in any orientation and
spacing, in the scanner's space with skull) into ``OUT/<id>/<id>_<modality>.nii.gz`` on the
model's grid, skull-stripped, with ``ingest.json`` (what was done, the quality check), the
transforms, and a picture of the registration. OUT is written whole or not at all.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from gliograde.config.compose import CONF_DIR
from gliograde.data.errors import DataError
from gliograde.errors import ConfigError, exit_on_user_error
from gliograde.ingest.cohort import SUMMARY_FILE, format_summary, ingest_patients
from gliograde.ingest.settings import read_settings
from gliograde.ingest.sources import check_source, find_patients
from gliograde.ingest.target import model_space
from gliograde.files.output_folder import staged_folder

CONFIG_NAME = "ingest_scans"
USAGE = "python -m gliograde.ingest SRC OUT model=RUN [ingest.series.flair=[...]] [files.flair=GLOB] [on_error=skip]"
# OUT must be new or empty: an existing one holding anything but this summary is refused.
OWN_FILES = (SUMMARY_FILE,)


def compose(argv: Sequence[str]) -> DictConfig:
    """The command's config from ``argv``: two positional folders, then ``key=value`` overrides."""
    positional = [a for a in argv if "=" not in a]
    # model= is read here: in the config tree "model" is the group of networks, not a path
    models = [a.partition("=")[2] for a in argv if a.startswith("model=")]
    overrides = [a for a in argv if "=" in a and not a.startswith("model=")]
    if len(positional) != 2:
        raise ConfigError(f"give SRC and OUT folders, then options: {USAGE}")
    from gliograde.config.compose import _compose  # one-line errors for a bad override

    with hydra.initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = _compose(CONFIG_NAME, [*overrides, f"src={_quoted(positional[0])}", f"out={_quoted(positional[1])}"])
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra", None)
    cfg.model = models[-1] if models else None
    return cfg


def run(cfg: DictConfig) -> Path:
    """Ingest ``cfg.src`` into ``cfg.out`` for the model ``cfg.model``; return OUT."""
    if not cfg.get("model"):
        raise ConfigError(f"model= is required (a run directory, checkpoint or export): {USAGE}")
    on_error = str(cfg.get("on_error", "raise"))
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error={on_error}: must be raise or skip")
    src, out = Path(str(cfg.src)).expanduser(), Path(str(cfg.out)).expanduser()
    settings = read_settings(cfg.ingest, cfg.get("files"))
    check_source(src, out)
    from gliograde.inference.models import open_model

    contract = open_model(str(cfg.model)).contract
    space = model_space(str(cfg.model), contract, settings.template)
    print(f"Template: {space.template_source}")
    skipped: list[DataError] | None = [] if on_error == "skip" else None
    # every patient's series are found and named before any image is decoded
    patients = find_patients(src, settings.rules, settings.files)
    with staged_folder(out, "OUT", OWN_FILES) as staging:
        table = ingest_patients(patients, space, settings, staging, skipped)
    for err in skipped or []:
        print(f"skipped: {err}")
    print(format_summary(table, out))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """The command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return
    with exit_on_user_error():
        run(compose(argv))


def _quoted(path: str) -> str:
    """A path as a Hydra override value (quoted, so any character is kept)."""
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"
