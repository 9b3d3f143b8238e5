"""The codes of what cxrdet finds, as its DICOM results (:mod:`cxrdet.inference.dicom_results`)
write them: SNOMED CT where DICOM's own code tables (PS3.16, as pydicom ships them) have the
finding's concept exactly, else the project's coding scheme ``99CXRDET``, declared in each SR.
docs/deployment.md lists every code with its source."""

from __future__ import annotations

import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

SCHEME = "99CXRDET"  # the project's coding scheme (PS3.16 8.2: a private designator starts 99)
# Findings with a SNOMED CT concept in DICOM's own code tables (PS3.16, as pydicom ships them)
# whose meaning is exactly the label's; the others are the project's codes, one per name.
PUBLISHED = {
    "Cardiomegaly": codes.SCT.Cardiomegaly,  # 287272002
    "Pleural effusion": codes.SCT.PleuralEffusion,  # 60046008
    "Pneumothorax": codes.SCT.Pneumothorax,  # 36118008
    "Edema": codes.SCT.Edema,  # 79654002
}
OWN = {  # name → code value in 99CXRDET (kaggle14's and local22's names; stable, never reused)
    "Aortic enlargement": "AORTIC_ENL",
    "Atelectasis": "ATELECTASIS",
    "Calcification": "CALCIFICATION",
    "Consolidation": "CONSOLIDATION",
    "ILD": "ILD",
    "Infiltration": "INFILTRATION",
    "Lung Opacity": "LUNG_OPACITY",
    "Nodule/Mass": "NODULE_MASS",
    "Other lesion": "OTHER_LESION",
    "Pleural thickening": "PLEURAL_THICK",
    "Pulmonary fibrosis": "PULM_FIBROSIS",
    "Clavicle fracture": "CLAVICLE_FX",
    "Emphysema": "EMPHYSEMA",
    "Enlarged PA": "ENLARGED_PA",
    "Lung cavity": "LUNG_CAVITY",
    "Lung cyst": "LUNG_CYST",
    "Mediastinal shift": "MEDIAST_SHIFT",
    "Rib fracture": "RIB_FX",
}
SCORE = Code("SCORE", SCHEME, "Detection score")  # the detector's score, unit "1", 0..1


def finding_code(name: str) -> Code:
    """The coded finding type of a class name (:data:`PUBLISHED`, else :data:`OWN`)."""
    if name in PUBLISHED:
        return PUBLISHED[name]
    if name not in OWN:
        raise ValueError(f"no DICOM code for the class {name!r}")
    return Code(OWN[name], SCHEME, name)


def coding_scheme() -> pydicom.Dataset:
    """The declaration of :data:`SCHEME` that a private coding scheme needs."""
    item = pydicom.Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "cxrdet findings"
    item.CodingSchemeResponsibleOrganization = "cxrdet"
    return item
