"""Patients without a tumour mask, at evaluate.py and predict.py: refused in one line when the
model's input contract needs a mask, graded by a mask-free slice rule only when the user asks
(``mask_free=brain``), and each patient's rule recorded (``slice_rule``).

A contract needs a mask when its slice rule selects tumour slices (``tumor_topk``,
``tumor_all``) or its crop centres on the tumour (``data.crop.mode=tumor``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gliograde.data.batches.slices import NEEDS_MASK
from gliograde.errors import ConfigError, GliogradeError

MASK_FREE_RULES = ("brain", "middle", "range")  # slice strategies that need no mask
MASK_RULE = "mask"  # slice_rule of a patient graded with its own tumour mask
PREDICTED_MASK_RULE = "predicted mask"  # ... with a mask a segmenter predicted
MASKS = ("use", "hidden")  # evaluate.py's masks=: use the cohort's masks, or act as if it had none
WAYS_OUT = (
    "give a trained segmenter (segmenter=RUN, a run of task=segment) to predict its mask, or pass "
    "mask_free=brain to grade it by the brain rule knowingly"
)


class MissingMaskError(GliogradeError):
    """A patient without a tumour mask where the model's input or the aggregate needs one."""


def needs_mask(contract: Mapping[str, Any]) -> bool:
    """Whether the contract's slice rule or crop is placed by the tumour."""
    crop = contract.get("crop") or {}
    return contract["slices"]["strategy"] in NEEDS_MASK or crop.get("mode") == "tumor"


def what_needs_it(contract: Mapping[str, Any]) -> str:
    """The contract's part that needs a mask, for messages."""
    strategy = contract["slices"]["strategy"]
    if strategy in NEEDS_MASK:
        return f"its tumour slices (data.slices.strategy={strategy})"
    return "its crop centred on the tumour (data.crop.mode=tumor)"


def check_mask_free(value: Any) -> str | None:
    """``mask_free``: None (refuse patients without a mask) or a mask-free slice strategy."""
    if value is None:
        return None
    if str(value) not in MASK_FREE_RULES:
        raise ConfigError(
            f"mask_free={value!r} must be null (refuse a patient without a tumour mask) or one of "
            f"{list(MASK_FREE_RULES)} (the slice rule for such a patient)"
        )
    return str(value)


def check_masks(value: Any) -> str:
    """``masks``: ``use`` or ``hidden``."""
    if str(value) not in MASKS:
        raise ConfigError(f"masks={value!r} must be one of {list(MASKS)}")
    return str(value)


def _who(missing: Sequence[str], hidden: bool) -> str:
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    return f"patient {missing[0]}{more} has no tumour mask{' (masks=hidden)' if hidden else ''}"


def refuse_missing_masks(
    missing: Sequence[str],
    contract: Mapping[str, Any],
    mask_free: str | None,
    aggregate: str | None = None,
    hidden: bool = False,
) -> None:
    """Refuse, in one line, patients without a mask (``missing``, ids; ``hidden``: by
    ``masks=hidden``) that the model's contract or ``aggregate=tumor_weighted`` cannot grade;
    nothing when none is missing."""
    if not missing:
        return
    if aggregate == "tumor_weighted":
        given = (
            f"; mask_free={mask_free} does not help: equal weights would give the mean, not what was asked"
            if mask_free
            else ""
        )
        who = _who(missing, hidden)
        raise MissingMaskError(
            f"aggregate=tumor_weighted weighs each slice by its tumour area, but {who}: give a "
            f"trained segmenter (segmenter=RUN, a run of task=segment) to predict its mask, or use "
            f"aggregate=mean{given}"
        )
    if mask_free is None and needs_mask(contract):
        raise MissingMaskError(
            f"{_who(missing, hidden)}, and the model needs one for {what_needs_it(contract)}: {WAYS_OUT}"
        )


def slice_rule(contract_strategy: str, needs: bool, has_tumour: bool, mask_free: str | None,
               predicted: bool = False) -> tuple[str, str]:
    """(recorded slice rule, slice strategy to select by) of one patient.

    A contract that needs no mask keeps its own strategy (the rule is its name); one that needs a
    mask records ``mask`` (``predicted mask``) for a patient with a tumour, and for one without
    the mask-free rule: ``mask_free`` in place of a tumour strategy, the contract's own strategy
    with a tumour crop (the crop then centres on the brain).
    """
    if not needs:
        return contract_strategy, contract_strategy
    if has_tumour:
        return (PREDICTED_MASK_RULE if predicted else MASK_RULE), contract_strategy
    if contract_strategy in NEEDS_MASK:
        if mask_free is None:
            return contract_strategy, contract_strategy  # selection refuses it, as in training
        return mask_free, mask_free
    return contract_strategy, contract_strategy


def mask_free_note(rules: Mapping[str, str], contract: Mapping[str, Any]) -> str | None:
    """The sentence saying how many patients were graded without a tumour mask; None if none."""
    if not needs_mask(contract):
        return None
    free = [rule for rule in rules.values() if rule not in (MASK_RULE, PREDICTED_MASK_RULE)]
    if not free:
        return None
    names = sorted(set(free))
    trained_on = (
        "tumour slices" if contract["slices"]["strategy"] in NEEDS_MASK else "crops centred on the tumour"
    )
    return (
        f"{len(free)} patient(s) graded by the {'/'.join(names)} rule without a tumour mask: the model "
        f"was trained on {trained_on}"
    )
