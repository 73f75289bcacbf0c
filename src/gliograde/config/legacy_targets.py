"""``_target_`` class paths of runs trained before the package was arranged by role.

Every run folder keeps its composed config.yaml, whose ``_target_`` strings name classes by
module path. A run read back (resumed, evaluated, graded) has its old paths mapped to where the
classes live now, so a run trained earlier keeps working.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

LEGACY_TARGETS: dict[str, str] = {
    "gliograde.callbacks.SampleSlicesToTensorBoard": "gliograde.training.callbacks.SampleSlicesToTensorBoard",
    "gliograde.callbacks.TestConfusionMatrixToTensorBoard": (
        "gliograde.training.callbacks.TestConfusionMatrixToTensorBoard"
    ),
    "gliograde.tracking.LocalMLFlowLogger": "gliograde.training.tracking.LocalMLFlowLogger",
    "gliograde.hydra_callbacks.CheckOutputDirectory": "gliograde.config.hydra_callbacks.CheckOutputDirectory",
    "gliograde.hydra_callbacks.SweepReport": "gliograde.config.hydra_callbacks.SweepReport",
}
"""Old class path -> current class path, for every class a saved config can name."""


def current_targets(config: Any) -> Any:
    """``config`` (a DictConfig or plain containers) with every old ``_target_`` mapped to its
    current class path; a DictConfig comes back as a new DictConfig, the input is left as it is."""
    if isinstance(config, DictConfig):
        plain = OmegaConf.to_container(config, resolve=False)
        return OmegaConf.create(current_targets(plain))
    if isinstance(config, dict):
        return {
            key: LEGACY_TARGETS.get(value, value) if key == "_target_" and isinstance(value, str)
            else current_targets(value)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [current_targets(item) for item in config]
    return config
