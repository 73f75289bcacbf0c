"""The error evaluate.py raises when an evaluation cannot be done as asked."""

from __future__ import annotations

from gliograde.errors import GliogradeError


class EvaluationError(GliogradeError, ValueError):
    """The evaluation cannot be done as asked (leakage, missing run files, no labels...)."""
