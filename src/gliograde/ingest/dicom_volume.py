"""One DICOM series as a 3D SimpleITK image, after checking its slices form one regular stack."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import UID

from gliograde.data.errors import DataError

# Transfer syntaxes SimpleITK's GDCM decodes: uncompressed, deflated, JPEG baseline/extended/
# lossless, JPEG-LS, JPEG 2000 and RLE.
DECODABLE = frozenset({
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
})
_POSITION_TOLERANCE = 1e-3  # mm: two slices closer than this along the normal share a position
_ORIENTATION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SliceHeader:
    """What the checks need of one slice file, read without its pixel data."""

    path: Path
    sop_uid: str
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    rows: int
    columns: int
    pixel_spacing: tuple[float, ...] | None
    frames: int
    transfer_syntax: str
    temporal: tuple[str, ...]  # TemporalPositionIdentifier, EchoNumbers, TriggerTime, AcquisitionNumber

    @classmethod
    def from_dataset(cls, ds: pydicom.Dataset, path: Path) -> SliceHeader:
        """The header of ``ds`` (read from ``path`` with ``stop_before_pixels``)."""
        def floats(keyword: str) -> tuple[float, ...] | None:
            value = ds.get(keyword)
            try:
                return tuple(float(v) for v in value) if value is not None else None
            except (TypeError, ValueError):
                return None

        meta = getattr(ds, "file_meta", None)
        syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        temporal = tuple(str(ds.get(k, "")) for k in
                         ("TemporalPositionIdentifier", "EchoNumbers", "TriggerTime", "AcquisitionNumber"))
        return cls(path=Path(path), sop_uid=str(ds.get("SOPInstanceUID", path)),
                   position=floats("ImagePositionPatient"), orientation=floats("ImageOrientationPatient"),
                   rows=int(ds.get("Rows", 0) or 0), columns=int(ds.get("Columns", 0) or 0),
                   pixel_spacing=floats("PixelSpacing"), frames=int(ds.get("NumberOfFrames", 1) or 1),
                   transfer_syntax=syntax or "1.2.840.10008.1.2", temporal=temporal)


def read_header(path: Path) -> SliceHeader:
    """The :class:`SliceHeader` of one DICOM file (pixel data not read)."""
    return SliceHeader.from_dataset(pydicom.dcmread(path, stop_before_pixels=True), path)


def syntax_name(uid: str) -> str:
    """A transfer syntax's name and UID, e.g. ``RLE Lossless (1.2.840.10008.1.2.5)``."""
    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


@dataclass(frozen=True)
class SeriesGeometry:
    """A checked series: files sorted along the slice normal and what provenance shows."""

    files: tuple[Path, ...]
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]
    orientation: str  # e.g. "LPS" (ITK's code for the voxel axes)
    plane: str  # axial, coronal, sagittal or oblique
    transfer_syntaxes: tuple[str, ...]
    duplicates_dropped: int

    def details(self) -> dict[str, Any]:
        """The geometry as plain values for provenance."""
        return {"size": list(self.size), "spacing": [round(s, 4) for s in self.spacing],
                "orientation": self.orientation, "plane": self.plane,
                "transfer_syntax": ", ".join(syntax_name(s) for s in self.transfer_syntaxes),
                "slices": len(self.files)}


def plane_of(normal: np.ndarray) -> str:
    """axial, coronal or sagittal where the slice normal is within 1 degree of an axis, else oblique."""
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < np.cos(np.radians(1.0)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _where(description: str, headers: Sequence[SliceHeader]) -> str:
    folder = os.path.commonpath([str(h.path.parent) for h in headers]) if headers else "?"
    return f"series {description!r} ({folder})"


def check_series(headers: Sequence[SliceHeader], patient: str, description: str) -> SeriesGeometry:
    """Check that the slices form one regular 3D stack; one line naming the problem if not.

    Copies of one instance (same SOPInstanceUID) are kept once. Refused: a multi-frame file,
    missing position or orientation, several orientations, sizes or pixel spacings, a transfer
    syntax SimpleITK cannot decode, slices not stacked along their normal, repeated positions
    (4D: several temporal positions or echoes), one slice, and a gap (missing slices) or uneven
    spacing along the normal.
    """
    unique = list({h.sop_uid: h for h in headers}.values())
    dropped = len(headers) - len(unique)
    where = _where(description, unique)

    def fail(problem: str) -> DataError:
        return DataError(problem, patient, where)

    if any(h.frames > 1 for h in unique):
        raise fail("multi-frame (enhanced) DICOM is not read; export the series as classic "
                   "single-frame images")
    if any(h.position is None or h.orientation is None or len(h.orientation) != 6 for h in unique):
        raise fail("a slice has no ImagePositionPatient/ImageOrientationPatient: not a volume")
    undecodable = sorted({h.transfer_syntax for h in unique} - DECODABLE)
    if undecodable:
        raise fail(f"transfer syntax {', '.join(syntax_name(s) for s in undecodable)} cannot be "
                   "decoded; convert the files to an uncompressed syntax (e.g. gdcmconv --raw)")
    if len(unique) < 2:
        raise fail("one slice: a 2D image, not a volume")
    orientations = Counter(tuple(np.round(h.orientation, 3)) for h in unique)
    first = np.array(unique[0].orientation)
    if any(np.abs(np.array(h.orientation) - first).max() > _ORIENTATION_TOLERANCE for h in unique):
        planes = Counter(plane_of(np.cross(o[:3], o[3:])) for o in map(np.array, orientations.elements()))
        raise fail(f"slices in {len(orientations)} orientations ("
                   + ", ".join(f"{p} x{n}" for p, n in planes.items())
                   + "): one series must be one stack; export each stack as its own series")
    sizes = Counter((h.columns, h.rows) for h in unique)
    spacings = Counter(h.pixel_spacing for h in unique)
    if len(sizes) > 1 or len(spacings) > 1:
        shown = ", ".join(f"{c}x{r} x{n}" for (c, r), n in sizes.items()) if len(sizes) > 1 else \
            ", ".join(f"{s} mm x{n}" for s, n in spacings.items())
        raise fail(f"slices of different sizes or pixel spacings ({shown}): one series must be "
                   "one stack; export each stack as its own series")
    if unique[0].pixel_spacing is None:
        raise fail("no PixelSpacing: the voxel size is unknown")
    row, col = first[:3], first[3:]
    normal = np.cross(row, col)
    positions = np.array([h.position for h in unique])
    along = positions @ normal
    in_plane = (positions - positions[0]) @ np.stack([row, col], axis=1)
    if np.abs(in_plane).max() > 0.05:
        raise fail(f"slices are shifted in plane (by up to {np.abs(in_plane).max():.2f} mm across the "
                   "stack, a gantry tilt?): resample to an orthogonal stack first")
    order = np.argsort(along, kind="stable")
    along = along[order]
    steps = np.diff(along)
    repeated = int((steps < _POSITION_TOLERANCE).sum())
    if repeated:
        counts = Counter(np.round(along / _POSITION_TOLERANCE).astype(np.int64))
        per_position = set(counts.values())
        varying = [name for name, i in (("temporal positions", 0), ("echoes", 1),
                                         ("trigger times", 2), ("acquisitions", 3))
                   if len({h.temporal[i] for h in unique}) > 1]
        if len(per_position) == 1:
            raise fail(f"4D series: {next(iter(per_position))} images at each of {len(counts)} "
                       f"slice positions ({', '.join(varying) or 'same position repeated'}); export "
                       "one time point or echo as its own series")
        raise fail(f"{repeated} slice(s) repeat another slice's position ({len(unique)} slices at "
                   f"{len(counts)} positions{'; ' + ', '.join(varying) + ' vary' if varying else ''}); "
                   "remove the repeated slices")
    step = float(np.median(steps))
    gap = int(np.argmax(steps))
    if steps[gap] > 1.5 * step:
        missing = int(round(steps[gap] / step)) - 1
        raise fail(f"missing slices: a gap of {steps[gap]:.2f} mm between slice positions "
                   f"{along[gap]:.2f} and {along[gap + 1]:.2f} mm where slices are {step:.2f} mm "
                   f"apart (about {missing} slice(s) missing); copy the complete series")
    if np.abs(steps - step).max() > max(0.05 * step, 0.02):
        raise fail(f"uneven slice spacing ({steps.min():.2f} to {steps.max():.2f} mm): not one "
                   "regular stack; resample it to even spacing first")
    direction = np.stack([row, col, normal], axis=1)
    ps = unique[0].pixel_spacing
    return SeriesGeometry(
        files=tuple(unique[i].path for i in order),
        size=(unique[0].columns, unique[0].rows, len(unique)),
        spacing=(float(ps[1]), float(ps[0]), step),
        direction=tuple(float(v) for v in direction.ravel()),
        orientation=sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
            tuple(float(v) for v in direction.ravel())),
        plane=plane_of(normal),
        transfer_syntaxes=tuple(sorted({h.transfer_syntax for h in unique})),
        duplicates_dropped=dropped,
    )


def decode_series(geometry: SeriesGeometry, patient: str, description: str) -> sitk.Image:
    """Decode a checked series with SimpleITK's ImageSeriesReader, files in the checked order,
    as float32 with each slice's own rescale slope and intercept applied."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in geometry.files])
    # float32 whatever the stored type: slices may carry different rescale slopes (fractions)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        damaged = _short_pixel_data(geometry.files)
        if damaged is not None:
            raise DataError(f"pixel data is {damaged[1]}; copy the series again", patient,
                            f"series {description!r} ({damaged[0]})") from err
        syntaxes = ", ".join(syntax_name(s) for s in geometry.transfer_syntaxes)
        last = str(err).strip().splitlines()[-1] if str(err).strip() else "read failed"
        raise DataError(f"pixel data cannot be decoded (transfer syntax {syntaxes}: {last}); "
                        "convert the files to an uncompressed syntax (e.g. gdcmconv --raw)", patient,
                        f"series {description!r} ({geometry.files[0].parent})") from err
    if image.GetSize() != geometry.size or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"decoded as {image.GetSize()} with {image.GetNumberOfComponentsPerPixel()} "
                        f"component(s), headers say {geometry.size} greyscale", patient,
                        f"series {description!r} ({geometry.files[0].parent})")
    return image


def _short_pixel_data(files: Sequence[Path]) -> tuple[Path, str] | None:
    """The first file whose uncompressed pixel data is missing or shorter than its header says.

    Only called once SimpleITK failed, to name the damaged file (e.g. a copy cut short).
    """
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except Exception as err:  # pydicom raises many types on a damaged file
            return path, f"unreadable ({type(err).__name__}: {err})"
        if UID(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")).is_compressed:
            continue
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) \
            * int(ds.BitsAllocated) // 8
        got = len(ds.get("PixelData", b"") or b"")
        if got < expected:
            return path, f"{got} bytes where {ds.Rows}x{ds.Columns} pixels need {expected} (truncated file?)"
    return None


def read_dicom_series(files: Sequence[Path], patient: str, description: str) -> sitk.Image:
    """Read one series' files (any order) as a 3D image sorted along the slice normal.

    Headers are checked first (:func:`check_series`), so a bad stack is one line before any
    pixel data is decoded.
    """
    headers = [read_header(Path(f)) for f in files]
    if not headers:
        raise DataError("no files", patient, f"series {description!r}")
    return decode_series(check_series(headers, patient, description), patient, description)
