"""Detections as DICOM objects a PACS stores and its viewers draw (``predict.py
results.dicom=[sr,gsps]``), one of each per source image, written with highdicom:

- a Comprehensive 3D SR whose root is TID 1500 (Measurement Report), what the IHE AI Results
  profile asks for: one TID 1410 planar ROI group per detection, its box a closed POLYLINE of 5
  points in the source image's pixel grid (columns, rows; the submission's coordinates, (0, 0)
  the top-left corner of the top-left pixel), its finding type coded
  (:mod:`cxrdet.inference.finding_codes`), a tracking UID, the detector's score as a
  measurement, and the algorithm's identification
  (name, version, the checkpoint's SHA-256, the score threshold); an image with no detection at
  the threshold (or one the "No finding" filter emptied) gets one image-level group saying
  "Finding: absence of findings";
- a Grayscale Softcopy Presentation State with the same rectangles and a label (finding,
  score) as graphic annotations, for viewers that draw GSPS and not SR graphics (Weasis); the
  source's own window (VOI) applies.

Both carry the source's patient and study attributes and reference its study, series and SOP
instance UIDs: a PACS files them beside the image. Nothing else about the patient is added.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cxrdet.data.classes import NO_FINDING_NAME
from cxrdet.inference.finding_codes import SCORE, coding_scheme, finding_code

log = logging.getLogger(__name__)
logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs each attribute it copies

KINDS = ("sr", "gsps")
MANUFACTURER = "cxrdet"
# Type 2 attributes highdicom copies from the source: present, and empty where it has none.
TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "ReferringPhysicianName",
)  # fmt: skip
NEEDED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows")


@dataclass
class Algorithm:
    """What made the results: recorded in every SR and GSPS."""

    version: str  # cxrdet's
    checkpoint_sha256: str  # of the (first) checkpoint or exported model file
    threshold: float  # detections scoring below are not written

    @property
    def uid(self) -> str:
        """A device UID that is the same for the same model and threshold."""
        return generate_uid(entropy_srcs=[self.checkpoint_sha256, f"{self.threshold:g}"])

    def parameters(self) -> list[str]:
        return [f"checkpoint SHA-256 {self.checkpoint_sha256}", f"score >= {self.threshold:g}"]


def source_header(path: str | Path) -> pydicom.Dataset:
    """The source image's header (no pixels), checked for what a result must reference, its
    empty Type 2 attributes filled; ValueError naming the file and what it lacks."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    missing = [k for k in NEEDED if k not in ds]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)}: a result cannot reference it")
    if ds.get("SamplesPerPixel", 1) != 1:
        raise ValueError(f"{path}: not a greyscale image (SamplesPerPixel {ds.SamplesPerPixel})")
    for key in TYPE2:
        if key not in ds:
            setattr(ds, key, "")
    return ds


def rectangle(box) -> np.ndarray:
    """A box ``x0, y0, x1, y1`` as a closed polyline of 5 (column, row) points."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def detections_to_write(pred, names: list[str], threshold: float) -> list[tuple]:
    """(name, score, box) of each finding scoring at least ``threshold``, best first; "No
    finding" entries (the filter's and the line's) are not boxes."""
    boxes, scores, classes = pred
    keep = [
        (names[int(c)], float(s), b)
        for b, s, c in zip(boxes, scores, classes)
        if int(c) < len(names) and names[int(c)] != NO_FINDING_NAME and s >= threshold
    ]
    return sorted(keep, key=lambda d: -d[1])


def structured_report(source: pydicom.Dataset, detections: list[tuple], algorithm: Algorithm):
    """The TID 1500 Comprehensive 3D SR of ``detections`` on ``source``."""
    import highdicom as hd

    algo = hd.sr.AlgorithmIdentification(
        name=MANUFACTURER, version=algorithm.version, parameters=algorithm.parameters()
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.uid, name=MANUFACTURER, model_name=algorithm.checkpoint_sha256
        ),
    )
    groups = []
    for i, (name, score, box) in enumerate(detections, 1):
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=rectangle(box),
            source_image=hd.sr.SourceImageForRegion.from_source_image(source),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{i}"),
                referenced_region=region,
                finding_type=finding_code(name),
                algorithm_id=algo,
                measurements=[
                    hd.sr.Measurement(
                        name=SCORE,
                        value=round(score, 6),
                        unit=codes.UCUM.NoUnits,
                        algorithm_id=algo,
                    )
                ],  # fmt: skip
            )
        )
    if not groups:  # the image was read and nothing was found: said, not left out
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="0"),
                algorithm_id=algo,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(codes.DCM.Finding, codes.SCT.AbsenceFindings)
                ],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.cid100.XRUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description="cxrdet findings (SR)",
        is_complete=True,
    )
    sr.CodingSchemeIdentificationSequence = [coding_scheme()]
    return sr


def presentation_state(source: pydicom.Dataset, detections: list[tuple], algorithm: Algorithm):
    """The GSPS drawing ``detections`` on ``source``, each labelled with finding and score."""
    import highdicom as hd

    layer = hd.pr.GraphicLayer(layer_name="CXRDET", order=1, description="cxrdet findings")
    graphics = [
        hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
            graphic_data=rectangle(box),
            units=hd.pr.AnnotationUnitsValues.PIXEL,
        )
        for _, _, box in detections
    ]
    labels = [(f"{name} {score:.2f}", anchor(box, source)) for name, score, box in detections]
    if not detections:  # said on the image, as the SR says it
        labels = [(f"cxrdet: no finding with score >= {algorithm.threshold:g}", (1.0, 1.0))]
    texts = [
        hd.pr.TextObject(
            text_value=text,
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            anchor_point=point,
            anchor_point_visible=False,
        )
        for text, point in labels
    ]
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[source],
        graphic_layer=layer,
        graphic_objects=graphics or None,
        text_objects=texts,
    )
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=hd.UID(),
        series_number=901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER,
        software_versions=algorithm.version,
        device_serial_number=algorithm.checkpoint_sha256[:16],
        content_label="CXRDET",
        content_description=(
            f"cxrdet {algorithm.version}: {len(detections)} finding(s) with score >= "
            f"{algorithm.threshold:g}"
        )[:64],
        graphic_layers=[layer],
        graphic_annotations=[annotation],
    )
    # General Series: the body part (a chest radiograph's, unless the source says otherwise),
    # which tells a validator that no Laterality is due (Type 2C, for paired parts)
    gsps.BodyPartExamined = source.get("BodyPartExamined") or "CHEST"
    if "Laterality" in source:
        gsps.Laterality = source.Laterality
    return gsps


def anchor(box, source: pydicom.Dataset) -> tuple[float, float]:
    """Where a box's label sits: its top-left corner, inside the image."""
    x0, y0 = float(box[0]), float(box[1])
    return (min(max(x0, 0.0), float(source.Columns)), min(max(y0, 0.0), float(source.Rows)))


def write_results(
    source_path: str | Path,
    detections: list[tuple],
    algorithm: Algorithm,
    folder: str | Path,
    image_id: str,
    kinds=KINDS,
) -> list[Path]:
    """Write ``<folder>/<image_id>.sr.dcm`` and/or ``.gsps.dcm`` for one source image;
    returns the paths written. ValueError naming the file when its header cannot be
    referenced."""
    from cxrdet.atomic import atomic_write

    source = source_header(source_path)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made = {"sr": structured_report, "gsps": presentation_state}
    paths = []
    for kind in kinds:
        path = folder / f"{image_id}.{kind}.dcm"
        dataset = made[kind](source, detections, algorithm)
        atomic_write(path, lambda f, d=dataset: d.save_as(f, enforce_file_format=True))
        paths.append(path)
    return paths


def write_image(
    source_path, pred, names: list[str], algorithm: Algorithm, folder, image_id: str, kinds
) -> tuple[list[Path], str | None]:
    """:func:`write_results` of one image's final prediction (boxes in original pixels,
    scores, class ids) at the algorithm's threshold: the paths written, or none and why (a
    header a result cannot reference must not stop the other images)."""
    detections = detections_to_write(pred, names, algorithm.threshold)
    try:
        return write_results(source_path, detections, algorithm, folder, image_id, kinds), None
    except Exception as e:  # noqa: BLE001
        return [], str(e) if str(source_path) in str(e) else f"{source_path}: {e}"


def check_kinds(kinds) -> list[str]:
    kinds = list(kinds or [])
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"results.dicom: unknown kind {unknown[0]!r}: expected sr and/or gsps")
    return kinds


def read_back(path: str | Path) -> list[tuple[str, float, np.ndarray]]:
    """(finding name, score, box x0 y0 x1 y1) of each planar ROI in an SR written here, read
    with highdicom."""
    import highdicom as hd

    sr = hd.sr.srread(path)
    out = []
    for group in sr.content.get_planar_roi_measurement_groups():
        points = np.asarray(group.roi.value)
        score = next(m.value for m in group.get_measurements() if m.name == SCORE)
        x0, y0 = points.min(axis=0)
        x1, y1 = points.max(axis=0)
        out.append((group.finding_type.meaning, float(score), np.array([x0, y0, x1, y1])))
    return out


def write_all(
    dataset, preds: dict, errors: dict, names: list[str], kinds, folder, algorithm: Algorithm,
    progress: bool = True,
) -> dict:  # fmt: skip
    """The results of every image of a DICOM ``dataset`` (``dataset.files``) from its final
    predictions ``preds`` (image id → boxes in original pixels, scores, class ids; after the
    "No finding" filter). An image that could not be read, or whose header a result cannot
    reference, is named in the log and counted, and the rest go on. Returns ``{"files": paths
    written, "skipped": image id → why}``."""
    from tqdm import tqdm

    written, skipped = [], {}
    pairs = list(zip(dataset.ids, dataset.files))
    for image_id, path in tqdm(pairs, desc="DICOM results", unit="image", disable=not progress):
        if image_id in errors:
            skipped[image_id] = f"unreadable: {errors[image_id]}"
            continue
        paths, why = write_image(path, preds[image_id], names, algorithm, folder, image_id, kinds)
        written += paths
        if why:
            skipped[image_id] = why
    for image_id, why in skipped.items():
        log.warning("%s: no DICOM results: %s", image_id, why)
    if skipped:
        log.warning("DICOM results: %d of %d images skipped (above)", len(skipped), len(pairs))
    log.info("DICOM results: %d files in %s", len(written), folder)
    return {"files": written, "skipped": skipped}
