"""The class sets cxrdet trains and scores: Kaggle's 14 findings (``kaggle14``, the VinBigData
competition's ``train.csv``) and the VinDr-CXR release's 22 local labels (``local22``, PhysioNet's
``annotations_*.csv``), each followed by "No finding" as its last id; and the release's 6 global
labels (image-level diagnoses).

The two finding sets are not mapped onto each other: no source (the dataset's paper, the
competition's data page) says how the competition folded the 8 extra findings into its 14, so
each labels file is read with its own set only (:func:`cxrdet.data.labels.read_labels` refuses
another), and a class name outside that set is dropped and counted, never renamed.
"""

from __future__ import annotations

from dataclasses import dataclass

NO_FINDING_NAME = "No finding"


@dataclass(frozen=True)
class ClassSet:
    """Findings with boxes, ids ``0 .. len(findings) - 1``, then "No finding" (no box)."""

    name: str
    findings: tuple[str, ...]

    @property
    def no_finding(self) -> int:
        """The id of "No finding": the last one."""
        return len(self.findings)

    @property
    def num_findings(self) -> int:
        return len(self.findings)

    @property
    def names(self) -> list[str]:
        """Every class's name, by id ("No finding" last)."""
        return [*self.findings, NO_FINDING_NAME]


KAGGLE14 = ClassSet(
    "kaggle14",
    (
        "Aortic enlargement",
        "Atelectasis",
        "Calcification",
        "Cardiomegaly",
        "Consolidation",
        "ILD",
        "Infiltration",
        "Lung Opacity",
        "Nodule/Mass",
        "Other lesion",
        "Pleural effusion",
        "Pleural thickening",
        "Pneumothorax",
        "Pulmonary fibrosis",
    ),
)
# The release's 22 local labels, as it spells them, in their (ASCII) order: Kaggle's 14 names
# and 8 more. Names only: which boxes the competition kept or merged is not documented.
RELEASE_ONLY = (
    "Clavicle fracture",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "Lung cavity",
    "Lung cyst",
    "Mediastinal shift",
    "Rib fracture",
)
LOCAL22 = ClassSet("local22", tuple(sorted(KAGGLE14.findings + RELEASE_ONLY)))
CLASS_SETS = {s.name: s for s in (KAGGLE14, LOCAL22)}

# The release's image-level diagnoses, as image_labels_train.csv spells them; the test file
# spells "Other diseases" as "Other disease" (GLOBAL_SPELLINGS).
GLOBAL6 = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", NO_FINDING_NAME)
GLOBAL_SPELLINGS = {"Other disease": "Other diseases"}


def class_set(name: str | ClassSet | None, default: ClassSet = KAGGLE14) -> ClassSet:
    """The class set called ``name`` (``kaggle14`` or ``local22``); ``default`` for None."""
    if isinstance(name, ClassSet):
        return name
    if name is None:
        return default
    if name not in CLASS_SETS:
        raise ValueError(f"unknown class set {name!r}; expected one of {', '.join(CLASS_SETS)}")
    return CLASS_SETS[name]


def of_names(names) -> ClassSet:
    """The class set of a model's class names (``DetectorModule.class_names``, kept in its
    checkpoint: the findings, then "No finding" when it has that head)."""
    findings = tuple(n for n in names if n != NO_FINDING_NAME)
    for known in CLASS_SETS.values():
        if known.findings == findings:
            return known
    return ClassSet("custom", findings)
