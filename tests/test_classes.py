import pytest

from wbc.classes import PBC_CLASSES, canonical_label

CASES = [
    ("NEUTROPHIL", "neutrophil"), ("neutrophils", "neutrophil"), ("Neutrophil", "neutrophil"),
    ("SNE", "neutrophil"), ("band_neutrophils", "neutrophil"), ("EOSINOPHIL", "eosinophil"),
    ("eosinophils", "eosinophil"), ("LYMPHOCYTE", "lymphocyte"), ("lymphocytes", "lymphocyte"),
    ("MONOCYTE", "monocyte"), ("basophils", "basophil"), ("ig", "ig"), ("IG", "ig"),
    ("immature granulocyte", "ig"), ("Immature_Granulocytes", "ig"), ("metamyelocytes", "ig"),
    ("erythroblasts", "erythroblast"), ("NRBC", "erythroblast"), ("platelets", "platelet"),
    ("thrombocyte", "platelet"), ("banana", None), ("", None), ("TRAIN", None),
]


@pytest.mark.parametrize("raw,expected", CASES)
def test_canonical_label(raw, expected):
    assert canonical_label(raw) == expected


def test_pbc_classes_are_canonical():
    assert all(canonical_label(c) == c for c in PBC_CLASSES)
