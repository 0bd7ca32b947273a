"""Canonical modality and question-type names, and the raw OmniMedVQA strings that map onto them.

OmniMedVQA's raw strings carry typos ("Mag-netic", a missing parenthesis); they are kept verbatim
here because Med-R1's split files are named after them.
"""

from __future__ import annotations

# canonical name -> raw OmniMedVQA string (as written in its JSON and in Med-R1's split file names)
MODALITIES: dict[str, str] = {
    "ct": "CT(Computed Tomography)",
    "mri": "MR (Mag-netic Resonance Imaging)",
    "xray": "X-Ray",
    "ultrasound": "ultrasound",
    "dermoscopy": "Dermoscopy",
    "fundus": "Fundus Photography",
    "oct": "OCT (Optical Coherence Tomography",
    "microscopy": "Microscopy Images",
}

QUESTION_TYPES: dict[str, str] = {
    "modality_recognition": "Modality Recognition",
    "anatomy_identification": "Anatomy Identification",
    "disease_diagnosis": "Disease Diagnosis",
    "lesion_grading": "Lesion Grading",
    "biological_attribute": "Other Biological Attributes",
}

# Human-readable names, used in options of synthetic modality-recognition questions and in tables.
MODALITY_DISPLAY: dict[str, str] = {
    "ct": "CT",
    "mri": "MRI",
    "xray": "X-ray",
    "ultrasound": "Ultrasound",
    "dermoscopy": "Dermoscopy",
    "fundus": "Fundus photography",
    "oct": "OCT",
    "microscopy": "Microscopy",
}


def _key(text: str) -> str:
    """Normalise a raw string for lookup: lower case, letters and digits only."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


_MODALITY_ALIASES: dict[str, str] = {}
for _name, _raw in MODALITIES.items():
    for _alias in (_name, _raw, MODALITY_DISPLAY[_name]):
        _MODALITY_ALIASES[_key(_alias)] = _name
_MODALITY_ALIASES.update(
    {
        _key("MR (Magnetic Resonance Imaging)"): "mri",
        _key("OCT (Optical Coherence Tomography)"): "oct",
        _key("CT (Computed Tomography)"): "ct",
        _key("Computed Tomography"): "ct",
        _key("Magnetic Resonance Imaging"): "mri",
        _key("MR"): "mri",
        _key("X-ray"): "xray",
        _key("Ultrasound"): "ultrasound",
        _key("Microscopy"): "microscopy",
        _key("Fundus"): "fundus",
    }
)

_QUESTION_TYPE_ALIASES: dict[str, str] = {}
for _name, _raw in QUESTION_TYPES.items():
    _QUESTION_TYPE_ALIASES[_key(_name)] = _name
    _QUESTION_TYPE_ALIASES[_key(_raw)] = _name
_QUESTION_TYPE_ALIASES[_key("Biological Attribute")] = "biological_attribute"
_QUESTION_TYPE_ALIASES[_key("Other Biological Attribute")] = "biological_attribute"


def canonical_modality(raw: str) -> str:
    """Map a raw or canonical modality string to its canonical name; KeyError names the choices."""
    name = _MODALITY_ALIASES.get(_key(str(raw)))
    if name is None:
        raise KeyError(
            f"unknown modality {raw!r}; known: {', '.join(MODALITIES)} "
            f"(or their OmniMedVQA spellings: {', '.join(repr(r) for r in MODALITIES.values())})"
        )
    return name


def canonical_question_type(raw: str) -> str:
    """Map a raw or canonical question-type string to its canonical name."""
    name = _QUESTION_TYPE_ALIASES.get(_key(str(raw)))
    if name is None:
        raise KeyError(
            f"unknown question type {raw!r}; known: {', '.join(QUESTION_TYPES)} "
            f"(or {', '.join(repr(r) for r in QUESTION_TYPES.values())})"
        )
    return name
