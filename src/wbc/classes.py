"""Canonical cell-type names and the mapping of the many ways datasets spell them.

The canonical names are the eight PBC classes (Acevedo et al., Data in Brief 30, 2020).
Every dataset label goes through :func:`canonical_label` so that ``NEUTROPHIL``,
``neutrophils``, ``SNE`` or ``segmented neutrophil`` all mean ``neutrophil``.
"""

from __future__ import annotations

import re

PBC_CLASSES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)

#: The five leukocyte types of a classical differential.
WBC_TYPES: tuple[str, ...] = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")

DISPLAY_NAMES: dict[str, str] = {
    "basophil": "Basophil",
    "eosinophil": "Eosinophil",
    "erythroblast": "Erythroblast",
    "ig": "Immature granulocyte",
    "lymphocyte": "Lymphocyte",
    "monocyte": "Monocyte",
    "neutrophil": "Neutrophil",
    "platelet": "Platelet",
}

_SYNONYMS: dict[str, str] = {
    # neutrophil and its sub-classes (PBC prefixes BNE = band, SNE = segmented)
    "neutrophil": "neutrophil",
    "neutro": "neutrophil",
    "neu": "neutrophil",
    "ne": "neutrophil",
    "sne": "neutrophil",
    "bne": "neutrophil",
    "band": "neutrophil",
    "band neutrophil": "neutrophil",
    "segmented neutrophil": "neutrophil",
    "polymorphonuclear": "neutrophil",
    "pmn": "neutrophil",
    "eosinophil": "eosinophil",
    "eo": "eosinophil",
    "eos": "eosinophil",
    "basophil": "basophil",
    "ba": "basophil",
    "baso": "basophil",
    "lymphocyte": "lymphocyte",
    "lymph": "lymphocyte",
    "lym": "lymphocyte",
    "ly": "lymphocyte",
    "monocyte": "monocyte",
    "mono": "monocyte",
    "mo": "monocyte",
    "ig": "ig",
    "immature granulocyte": "ig",
    "immature": "ig",
    "myelocyte": "ig",
    "metamyelocyte": "ig",
    "promyelocyte": "ig",
    "my": "ig",
    "mmy": "ig",
    "pmy": "ig",
    "erythroblast": "erythroblast",
    "nrbc": "erythroblast",
    "nucleated red blood cell": "erythroblast",
    "nucleated rbc": "erythroblast",
    "normoblast": "erythroblast",
    "erb": "erythroblast",
    "platelet": "platelet",
    "plt": "platelet",
    "thrombocyte": "platelet",
}


def _normalise(text: str) -> str:
    text = re.sub(r"[_\-\s]+", " ", text.strip().lower())
    return text


def canonical_label(name: str) -> str | None:
    """Return the canonical class for a dataset label, or ``None`` if unknown.

    >>> canonical_label("NEUTROPHIL"), canonical_label("neutrophils"), canonical_label("IG")
    ('neutrophil', 'neutrophil', 'ig')
    """
    key = _normalise(name)
    if key in _SYNONYMS:
        return _SYNONYMS[key]
    for candidate in (key[:-1] if key.endswith("s") else None, key[:-2] if key.endswith("es") else None):
        if candidate and candidate in _SYNONYMS:
            return _SYNONYMS[candidate]
    # plural of a multi-word synonym: "immature granulocytes", "band neutrophils"
    words = key.split(" ")
    if words and words[-1].endswith("s"):
        singular = " ".join(words[:-1] + [words[-1][:-1]])
        if singular in _SYNONYMS:
            return _SYNONYMS[singular]
    return None


def display_name(label: str) -> str:
    return DISPLAY_NAMES.get(label, label)
