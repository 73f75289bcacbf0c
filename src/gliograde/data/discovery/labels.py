"""The label table: a CSV keyed by patient id, read with pandas.

Everything here raises :class:`DataError` with one-line messages that name the file and column.
:class:`UnusableLabelTable` (a ``DataError``) marks the failures that only matter when labels
are required: the table is absent, or lacks the id or label column. Anything else wrong with a
table that is present and has both columns (duplicate ids, an undecodable file) is always an
error, because the table would otherwise be used half-understood.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gliograde.data.errors import DataError
from gliograde.data.discovery.specs import LabelSpec

logger = logging.getLogger(__name__)

_MAX_EXAMPLES = 3
_DELIMITERS = ",;\t|"


class UnusableLabelTable(DataError):
    """The label table is missing, or lacks the id or label column.

    Fatal when labels are required; otherwise the cohort is treated as unlabelled.
    """


def resolve_label_file(spec: LabelSpec, patient_root: Path, root: str | Path) -> Path | None:
    """Where ``spec.file`` lives: ``None`` when the cohort has no label table configured.

    An absolute path is used as is; a relative one is tried against the folder that holds the
    patient folders, then against ``root`` (what the user gave as ``data.root``). Raises
    :class:`UnusableLabelTable` naming every place tried when none holds the file.
    """
    if spec.file is None:
        return None
    given = Path(spec.file).expanduser()
    if given.is_absolute():
        tried = [given]
    else:
        tried = [Path(patient_root) / given]
        other = Path(root).expanduser() / given
        if other.resolve() != tried[0].resolve():
            tried.append(other)
    for path in tried:
        if path.is_file():
            return path
    for path in tried:
        if path.exists():
            raise UnusableLabelTable("is not a file (data.labels.file must name a CSV table)", where=path)
    places = " or ".join(str(p) for p in tried)
    raise UnusableLabelTable(f"label table not found (looked for {places})", where=spec.file)


def read_label_frame(path: Path, spec: LabelSpec) -> pd.DataFrame:
    """Read ``path`` as a table of stripped strings, one row per patient, every column kept.

    A UTF-8 BOM, CRLF line ends, blank lines, Excel's trailing ``,,,,`` rows (an empty id) and
    extra (clinical) columns are all fine; the delimiter is sniffed among ``,``, ``;``, tab and
    ``|``. Cells equal to one of ``spec.missing_values`` are ``None``. The frame's index is the
    row's line number in the file.

    Raises :class:`UnusableLabelTable` when the table is empty or the id or label column is
    absent (the message lists the columns present), and :class:`DataError` for a duplicate id,
    a column named twice, a malformed table, or a file that is not UTF-8 text.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"not UTF-8 text (byte {err.start}); save the label table as a UTF-8 CSV", where=path
        ) from None
    except OSError as err:
        raise DataError(f"cannot read label table ({err.strerror or err})", where=path) from None
    empty = UnusableLabelTable(
        f"label table is empty (expected a header with columns {spec.id_column!r} and {spec.label_column!r})",
        where=path,
    )
    if not text.strip():
        raise empty
    sep = _delimiter(text)
    try:
        # Rows may be wider than the header (Excel pads with ",,,,"): read them as wide as any line
        # could be (quoted delimiters overcount), then drop the columns no row reached.
        width = max(line.count(sep) for line in text.splitlines()) + 1
        raw = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            header=None,
            names=range(width),
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,  # keeps index + 1 equal to the line number
            engine="python",
        )
    except (pd.errors.ParserError, csv.Error) as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        problem = f"malformed label table ({detail}); check its delimiter and quoting"
        raise DataError(problem, where=path) from None
    raw = raw.dropna(axis=1, how="all")
    cells = raw.fillna("").apply(lambda column: column.str.replace("\ufeff", "").str.strip())
    filled = cells.ne("").any(axis=1)
    if not filled.any():
        raise empty
    header_at = int(filled.idxmax())
    header = list(cells.loc[header_at])
    id_index = _column_index(header, spec.id_column, path, "id")
    _column_index(header, spec.label_column, path, "label")  # refuses a table without it, now

    missing = {_clean(value) for value in spec.missing_values}
    body = cells.loc[header_at + 1 :]
    body = body[body.iloc[:, id_index].ne("") & ~body.iloc[:, id_index].isin(missing)]
    body = body.set_axis(header, axis=1).set_axis(body.index + 1, axis=0)
    ids = body.iloc[:, id_index]
    repeated = ids[ids.duplicated(keep=False)]
    if not repeated.empty:
        pid = repeated.iloc[0]
        first, second = repeated.index[repeated == pid][:2]
        raise DataError(
            f"duplicate id {pid!r} in column {spec.id_column!r} (lines {first} and {second}); "
            "each patient needs exactly one row",
            where=path,
        )
    return body.astype(object).where(~body.isin(missing), None)


def read_label_table(path: Path, spec: LabelSpec) -> dict[str, str | None]:
    """``{patient id: label cell}`` from :func:`read_label_frame`; the cell is ``None`` when missing."""
    frame = read_label_frame(path, spec)
    ids = frame[spec.id_column].tolist()
    return dict(zip(ids, frame[spec.label_column].tolist()))


def _delimiter(text: str) -> str:
    """The delimiter (of ``_DELIMITERS``) that splits the first line with content, the header,
    into the most columns, quoting respected; ``,`` when none splits it."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    best, most = ",", 1
    for sep in _DELIMITERS:
        try:
            columns = pd.read_csv(io.StringIO(header), sep=sep, header=None, dtype=str, engine="python").shape[1]
        except (pd.errors.ParserError, csv.Error):
            continue
        if columns > most:
            best, most = sep, columns
    return best


@dataclass(frozen=True)
class LabelTable:
    """A read label table and the spec that says how to interpret it."""

    path: Path
    spec: LabelSpec
    rows: dict[str, str | None]

    @classmethod
    def load(cls, path: Path, spec: LabelSpec) -> LabelTable:
        return cls(path=Path(path), spec=spec, rows=read_label_table(path, spec))

    def label_of(self, patient_id: str, required: bool) -> int | None:
        """The class index of ``patient_id``; ``None`` when it has none and none is required.

        Raises :class:`DataError` (a per-patient problem) for a value that is not one of
        ``spec.classes`` (always), and for a missing row or missing value when ``required``.
        """
        spec = self.spec
        if patient_id not in self.rows:
            if not required:
                return None
            raise DataError(
                f"no row with this id in column {spec.id_column!r} (labels are required)",
                patient=patient_id,
                where=self.path,
            )
        value = self.rows[patient_id]
        if value is None:
            if not required:
                return None
            raise DataError(
                f"label in column {spec.label_column!r} is missing (labels are required)",
                patient=patient_id,
                where=self.path,
            )
        try:
            return tuple(spec.classes).index(value)
        except ValueError:
            raise DataError(
                f"column {spec.label_column!r} has {value!r}, which is not one of the classes "
                f"{list(spec.classes)}",
                patient=patient_id,
                where=self.path,
            ) from None

    def unmatched_ids(self, patient_ids: Iterable[str]) -> list[str]:
        """Ids in the table that name none of ``patient_ids``, sorted."""
        known = set(patient_ids)
        return sorted(pid for pid in self.rows if pid not in known)

    def warn_unmatched(self, patient_ids: Iterable[str], patient_root: Path) -> int:
        """Log ONE warning counting the rows that name no patient folder; return the count."""
        extra = self.unmatched_ids(patient_ids)
        if extra:
            examples = ", ".join(extra[:_MAX_EXAMPLES])
            if len(extra) > _MAX_EXAMPLES:
                examples += ", ..."
            logger.warning(
                "%s: ignoring %d row(s) whose id names no patient folder under %s (%s)",
                self.path,
                len(extra),
                patient_root,
                examples,
            )
        return len(extra)


def _clean(cell: str) -> str:
    return cell.replace("\ufeff", "").strip()


def _column_index(header: list[str], column: str, path: Path, role: str) -> int:
    hits = [i for i, name in enumerate(header) if name == column]
    if not hits:
        present = ", ".join(repr(name) for name in header if name)  # not the padding of wide rows
        raise UnusableLabelTable(f"no {role} column {column!r} (columns present: {present})", where=path)
    if len(hits) > 1:
        raise DataError(f"column {column!r} appears {len(hits)} times in the header; keep one", where=path)
    return hits[0]
