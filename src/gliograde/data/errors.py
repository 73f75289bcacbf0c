"""One error type for bad input data, rendered as a single line a user can act on."""

from __future__ import annotations

from pathlib import Path

from gliograde.errors import GliogradeError


class DataError(GliogradeError, ValueError):
    """Bad input data: names the patient (if any), the file or column, and the problem.

    ``str(err)`` is one line, e.g.
    ``patient BraTS20_Training_007: .../BraTS20_Training_007_t1.nii: volume is 2D (240, 240)``.
    """

    def __init__(self, problem: str, patient: str | None = None, where: str | Path | None = None):
        self.problem = problem
        self.patient = patient
        self.where = None if where is None else str(where)
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.patient is not None:
            parts.append(f"patient {self.patient}")
        if self.where is not None:
            parts.append(self.where)
        parts.append(self.problem)
        return ": ".join(parts).replace("\n", " ")

    def __reduce__(self):
        # Keep patient and file when the error crosses a process boundary (cache workers).
        return (DataError, (self.problem, self.patient, self.where))
