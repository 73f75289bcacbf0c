"""A cohort made ready for training, without torch: discover -> cache -> usable patients ->
split -> slice selection.

``PreparedCohort.load`` finds the cohort and opens (or builds) its cache; ``select`` splits the
usable patients and selects their slices. ``GliomaDataModule`` wraps one in Lightning, and
``python -m gliograde.prepare`` uses one alone, so preparing a cohort never imports torch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gliograde.contract.mask_free import slice_rule
from gliograde.data.batches.crops import normal_length
from gliograde.data.batches.slices import NEEDS_MASK, select_slices
from gliograde.data.batches.splits import SPLITS, read_splits, split_patients
from gliograde.data.caching.cache import open_or_build
from gliograde.data.caching.cache_box import SlabRule
from gliograde.data.caching.reader import CachedCohort
from gliograde.data.discovery.cohort import Cohort, discover_cohort
from gliograde.data.discovery.nifti import read_header
from gliograde.data.discovery.patient_files import PatientRecord
from gliograde.data.errors import DataError
from gliograde.data.pipeline.cohort_tables import usable_fingerprints, write_cohort_tables
from gliograde.data.pipeline.options import DataOptions
from gliograde.data.pipeline.selection_checks import (
    ADDED,
    check_saved_split,
    refuse_shared_images,
    warn_about_crop,
)
from gliograde.data.synthetic.generator import ensure_cohort
from gliograde.errors import ConfigError

log = logging.getLogger(__name__)



def slab_rule(options: DataOptions) -> SlabRule:
    """The axial slices a run's cache must hold: those its slice strategy can select, widened
    by ``data.slab_margin``, and by ``data.context`` at least (a selected slice's neighbours)."""
    return SlabRule.for_slices(options.slice_spec, max(options.slab_margin, options.context))


@dataclass
class PatientSlices:
    """The selected slices of one usable patient."""

    patient_id: str
    position: int  # index into the cache's patient list
    label: int  # -1: unlabelled
    slices: np.ndarray
    rule: str = ""  # how its slices were chosen: "mask", a mask-free strategy, ... (mask_free.slice_rule)


@dataclass(frozen=True)
class Tumour:
    """One patient's tumour where no mask file gives it (e.g. a predicted mask): per plane, the
    tumour voxels of each slice ``[n_slices]`` and the tumour's box in each slice ``[n_slices, 4]``
    (-1 where empty, see ``data.crops``). Slice selection, crop centres and ``tumor_weighted``
    all read it once ``PreparedCohort.apply_tumours`` wrote it into the cache's index."""

    areas: Mapping[str, np.ndarray]
    boxes: Mapping[str, np.ndarray]


class PreparedCohort:
    """The cohort of ``options``: its records, cache, problems, split and selected slices."""

    def __init__(self, options: DataOptions, check: str = "auto"):
        self.options = options
        self.check = check  # how much of the cache's volumes.npy an open verifies (cache_meta)
        self.cohort: Cohort | None = None
        self.cached: CachedCohort | None = None
        self.skipped: list[DataError] = []
        self.patients: list[PatientSlices] = []
        self.assignment: dict[str, str] = {}
        self.saved_split: Path | None = None  # a resumed run's splits.csv: see keep_split
        # Patients without a tumour mask where data.slices or data.crop needs one (evaluate,
        # predict): ``mask_free`` is the slice strategy they get (None: each is a problem, as in
        # training); ``hide_masks`` drops every mask file right after discovery (masks=hidden);
        # ``tumours_to_come`` lets load() pass them when apply_tumours will give them a tumour.
        self.mask_free: str | None = None
        self.hide_masks = False
        self.tumours_to_come = False
        self.supplied: set[str] = set()  # patients whose tumour apply_tumours gave
        # patient -> why it is not graded (a segmenter found no tumour): split as usual, then left out
        self.ungraded: dict[str, str] = {}
        # the splits that must keep a patient of each class (None: every split made)
        self.checked_splits: set[str] | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.options.classes

    @property
    def loaded(self) -> bool:
        return self.cached is not None

    @property
    def selected(self) -> bool:
        return bool(self.patients)

    # ------------------------------------------------------------------ load
    def load(self) -> None:
        """Generate the synthetic cohort if configured, discover the cohort and open (or build)
        its cache, and write cohort.csv/skipped.csv beside it; idempotent."""
        if self.cached is not None:
            return
        opts = self.options
        if opts.synthetic is not None:
            ensure_cohort(opts.root, dataclasses.asdict(opts.synthetic), progress=opts.progress)
        cohort = discover_cohort(
            opts.root, opts.layout, opts.label_spec, opts.require_labels, opts.modalities
        )
        if self.hide_masks:
            cohort = without_masks(cohort)
        if cohort.problems and opts.on_error == "raise":
            first = cohort.problems[0]
            more = f" (and {len(cohort.problems) - 1} more problem(s))" if len(cohort.problems) > 1 else ""
            raise DataError(first.problem + more, first.patient, first.where)
        self._check_context(cohort)
        if opts.slice_spec.strategy in NEEDS_MASK and opts.on_error == "raise" and not self.masks_optional:
            for record in cohort.patients:
                if record.mask is None:  # fail before the long build, not after it
                    hint = self.mask_hint(record)
                    select_slices(record.patient_id, np.zeros(1), None, opts.slice_spec, hint)
        cached = open_or_build(
            cohort.patients,
            opts.cache_dir,
            opts.preprocess_spec,
            opts.layout.mask_labels,
            on_error=opts.on_error,
            progress=opts.progress,
            slab=slab_rule(opts),
            required=opts.modalities,
            check=self.check,
        )
        unusable = self._mask_problems(cohort, cached)
        if unusable and opts.on_error == "raise":
            raise unusable[0]
        self.cohort, self.cached = cohort, cached
        self.skipped = list(cohort.problems) + list(cached.problems) + unusable
        for err in self.skipped:
            log.warning("Skipped %s", err)
        write_cohort_tables(self)

    def _check_context(self, cohort: Cohort) -> None:
        """Refuse a ``data.context`` wider than the volumes' depth along the plane's normal,
        from one header and before the cache: its channels would repeat the end slices, and
        its batches could exhaust the memory."""
        opts = self.options
        if opts.context == 0 or not cohort.patients:
            return
        record = cohort.patients[0]
        modality = next((m for m in opts.modalities if m in record.modalities), next(iter(record.modalities)))
        try:
            reorient = opts.preprocess_spec.reorient
            header = read_header(record.modalities[modality], record.patient_id, reorient)
        except DataError:
            return  # the build's header checks report the file
        x, y, z = header.shape
        plane = opts.slice_spec.plane
        depth = normal_length((x, y, z), plane)
        if 2 * opts.context + 1 > depth:
            raise ConfigError(
                f"data.context={opts.context} takes {2 * opts.context + 1} slices of each modality, "
                f"but the volumes hold {depth} {plane} slices (patient {record.patient_id}, shape "
                f"{header.shape}): choose data.context at most {(depth - 1) // 2}"
            )

    def _mask_problems(self, cohort: Cohort, cached: CachedCohort) -> list[DataError]:
        """Cached patients whose mask makes them unusable where the slice strategy needs one:
        empty (a glioma cohort's mask without tumour is a wrong file), or absent.

        A strategy that needs no mask (``brain``, ``middle``, ``range``) uses a patient with an
        empty mask as one without a mask, with a warning.
        """
        spec = self.options.slice_spec
        records = {r.patient_id: r for r in cohort.patients}
        problems = []
        empty = []
        for position, patient_id in enumerate(cached.patient_ids):
            record = records[patient_id]
            if cached.has_mask[position] and not cached.tumour_area["axial"][position].any():
                if spec.strategy not in NEEDS_MASK:
                    empty.append(f"{patient_id} ({record.mask})")
                    continue
                problems.append(
                    DataError(
                        "mask is empty (no tumour voxel): replace it with the patient's tumour mask, "
                        "or set data.on_error=skip to leave the patient out",
                        patient_id,
                        record.mask,
                    )
                )
            elif spec.strategy in NEEDS_MASK and not cached.has_mask[position] and not self.masks_optional:
                try:
                    select_slices(patient_id, np.zeros(1), None, spec, self.mask_hint(record))
                except DataError as err:
                    problems.append(err)
        if empty:
            log.warning(
                "%d patient(s) have an empty tumour mask, used as patients without one "
                "(data.slices.strategy=%s needs no mask): %s",
                len(empty),
                spec.strategy,
                ", ".join(empty),
            )
        return problems

    @property
    def masks_optional(self) -> bool:
        """Whether a patient without a mask is usable where the slice strategy needs one."""
        return self.mask_free is not None or self.tumours_to_come

    def apply_tumours(self, tumours: Mapping[str, Tumour]) -> None:
        """Give patients without a mask file their tumour (e.g. a predicted mask), after ``load``
        and before ``select``: the one place slice selection, crop centres and ``tumor_weighted``
        read a tumour from. Their ``slice_rule`` is ``predicted mask``."""
        assert self.cached is not None and not self.patients, "apply_tumours goes between load and select"
        cached = self.cached
        positions = {pid: i for i, pid in enumerate(cached.patient_ids)}
        for patient_id, tumour in tumours.items():
            position = positions[patient_id]
            for plane, areas in tumour.areas.items():
                cached.tumour_area[plane][position] = areas
                cached.tumour_boxes[plane][position] = tumour.boxes[plane]
            cached.has_mask[position] = True
            self.supplied.add(patient_id)

    def mask_hint(self, record: PatientRecord) -> str:
        """Where the patient's mask was expected, for messages."""
        expected = self.options.layout.mask_file.format(id=record.patient_id)
        return str(record.folder / f"{expected}.nii[.gz]")

    def label_name(self, label: int | None) -> str:
        """The class name of ``label``; empty for none (or -1, unlabelled)."""
        return "" if label is None or label < 0 else self.classes[label]

    def keep_split(self, splits_csv: Path) -> None:
        """Take the split from ``splits_csv`` (a resumed run's) instead of making one; ``select``
        then refuses a cohort that gained, lost or changed patients since it was written."""
        self.saved_split = Path(splits_csv)

    # ---------------------------------------------------------------- select
    def select(self) -> None:
        """Split the usable patients and select their slices (reads only the cache index); idempotent.

        The split is made over the patients that can contribute slices (every usable patient
        with a non-empty mask, or without a mask when the strategy needs none) before slice
        selection, so among mask-based strategies it depends on the cohort and ``data.split``
        alone: a sweep over them keeps one test set. A split that selection leaves without a
        patient of some class is refused.
        """
        if self.patients:
            return
        self.load()
        assert self.cohort is not None and self.cached is not None
        cached, opts = self.cached, self.options
        excluded = {err.patient for err in self.skipped if err.patient}
        records = {r.patient_id: r for r in self.cohort.patients if r.patient_id not in excluded}
        usable = [(pos, pid) for pos, pid in enumerate(cached.patient_ids) if pid in records]
        if not usable:
            raise DataError("no usable patient is left after the checks (see skipped.csv)", where=opts.root)
        assignment = self._assign([pid for _, pid in usable], [records[pid].label for _, pid in usable])

        plane = opts.slice_spec.plane
        brain_areas = cached.brain_area_of(opts.modalities, plane)  # the run's modalities' brain
        needs = opts.slice_spec.strategy in NEEDS_MASK or opts.crop_spec.mode == "tumor"
        patients: list[PatientSlices] = []
        empty: list[str] = []
        for position, patient_id in usable:
            if patient_id in self.ungraded:
                continue
            record = records[patient_id]
            tumour = cached.tumour_area[plane][position] if cached.has_mask[position] else None
            has_tumour = tumour is not None and bool(tumour.any())
            rule, strategy = slice_rule(
                opts.slice_spec.strategy, needs, has_tumour, self.mask_free, patient_id in self.supplied
            )
            spec = dataclasses.replace(opts.slice_spec, strategy=strategy)
            brain = brain_areas[position]
            chosen = select_slices(patient_id, brain, tumour, spec, self.mask_hint(record))
            if chosen.size == 0:
                empty.append(f"{patient_id} ({assignment[patient_id]})")
                continue
            label = -1 if record.label is None else record.label
            patients.append(PatientSlices(patient_id, position, label, chosen, rule))
        if empty:
            log.warning(
                "%d patient(s) have no slice selected by data.slices.strategy=%s and are left out: %s",
                len(empty),
                opts.slice_spec.strategy,
                ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else ""),
            )
        if not patients:
            raise ConfigError(
                f"data.slices={self.describe_slices()} selects no slice of any patient; "
                "choose another data.slices setting"
            )
        self.patients = patients
        self.assignment = {p.patient_id: assignment[p.patient_id] for p in patients}
        try:
            if self.saved_split is not None:
                check_saved_split(
                    self.saved_split,
                    self.assignment,
                    usable_fingerprints(self),
                    {p.patient_id: self.label_name(p.label) for p in self.patients},
                )
            graded = {split for pid, split in assignment.items() if pid not in self.ungraded}
            if self.checked_splits is not None:
                graded &= self.checked_splits
            self._check_split_sizes(graded, len(empty))
            refuse_shared_images(usable_fingerprints(self), self.assignment, self.options.root)
        except Exception:
            self.patients, self.assignment = [], {}  # a refused selection is never used
            raise
        assert self.cached is not None
        warn_about_crop(self.cached, self.options, {p.patient_id: p.position for p in self.patients})

    def _assign(self, patient_ids: list[str], labels: list[int | None]) -> dict[str, str]:
        """Each patient's split: ``all`` without a split (or labels, when they are optional)."""
        assert self.cohort is not None
        opts = self.options
        if self.saved_split is not None:
            saved = read_splits(self.saved_split)
            return {pid: saved.get(pid, ADDED) for pid in patient_ids}
        if opts.split_spec is None:
            return dict.fromkeys(patient_ids, "all")
        if self.cohort.labelled and all(label is not None for label in labels):
            return split_patients(patient_ids, labels, self.classes, opts.split_spec, opts.folds, opts.fold)
        if opts.require_labels:
            raise DataError(
                "training needs labels, but the cohort has none: set data.labels.file (and its "
                "columns), or data.require_labels=false to only predict",
                where=opts.root,
            )
        return dict.fromkeys(patient_ids, "all")

    def _check_split_sizes(self, splits: set[str], n_left_out: int) -> None:
        """Every split made must keep a patient of each class after slice selection."""
        for name in SPLITS:
            if name not in splits:
                continue
            present = Counter(p.label for p in self.patients if self.assignment[p.patient_id] == name)
            lacking = [self.classes[c] for c in range(len(self.classes)) if not present.get(c)]
            if lacking:
                raise ConfigError(
                    f"the {name} split has no {' or '.join(lacking)} patient left after slice selection "
                    f"by data.slices={self.describe_slices()} ({n_left_out} patient(s) got no slice): "
                    "choose a data.slices setting that selects slices of every patient (e.g. a lower "
                    "data.slices.min_area), or add patients"
                )

    def describe_slices(self) -> str:
        """``data.slices`` as the options that matter for its strategy, for messages."""
        spec = self.options.slice_spec
        detail = {
            "tumor_topk": f"k={spec.k}",
            "tumor_all": f"min_area={spec.min_area}",
            "brain": f"min_brain_fraction={spec.min_brain_fraction}",
            "middle": f"n={spec.n}",
            "range": f"z_min={spec.z_min}, z_max={spec.z_max}",
        }.get(spec.strategy, "")
        return f"{{strategy={spec.strategy}, {detail}, plane={spec.plane}}}"


def without_masks(cohort: Cohort) -> Cohort:
    """``cohort`` with no patient's mask file: as if none had been found, so no mask is read,
    and the cache's key (which covers every file) differs from the cache made with the masks."""
    patients = [dataclasses.replace(record, mask=None) for record in cohort.patients]
    return dataclasses.replace(cohort, patients=patients)
