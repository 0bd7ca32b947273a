"""Test helpers: write medr1 records as folders in the released layouts the real readers read.

Not a test module. Each writer takes a medr1 `Splits` (e.g. the synthetic set,
`instantiate(compose_config(["data.source.size=5"]).data.source).load()`), copies the record images
into the new folder and writes the JSON exactly as released, so that whole experiment configs can run
end to end on the real reading path (`data.root=<folder>`):

- write_medr1_splits: Med-R1's Splits/ folder (Yuxiang-Lai117/Med-R1), read by MedR1Splits.
- write_medvlm_r1_folder: a HuatuoGPT-Vision evaluation-data folder plus MedVLM-R1's released test file
  (JZPeterPan/MedVLM-R1), read by MedVLMR1 with test_file.

Records must carry canonical modality and question-type names (medr1.data.names); the files are named
after the raw OmniMedVQA strings, typos included.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from medr1.data.names import MODALITIES, QUESTION_TYPES
from medr1.data.records import Splits, VQARecord

HUATUO_FILE = "medical_multimodel_evaluation_data.json"  # the released name, typo included
MEDVLM_TEST_FILE = "MRI_CT_XRAY_300each_dataset.json"
MEDVLM_TEST_MODALITIES = ("mri", "ct", "xray")  # the released file's block order
# The release's quirk record: Splits/modality/train/unknown_train.json, a Chest CT Scan question.
QUIRK_PROBLEM = (
    "What imaging technique was employed for capturing this image? "
    "A)Angiography, B)Electrocardiogram (ECG), C)Mammogram, D)CT"
)
QUIRK_SOLUTION = "<answer> D </answer>"


class ImageCopier:
    """Copies each source image once to a unique path under `root`, remembering where it went."""

    def __init__(self, root: Path):
        self.root = root
        self.copied: dict[str, str] = {}  # absolute source path -> path relative to root

    def copy(self, source: str, relative: str) -> str:
        """The path (relative to root) of `source`'s copy, wanted at `relative`; suffixed if taken."""
        if source in self.copied:
            return self.copied[source]
        taken = set(self.copied.values())
        stem, dot, suffix = relative.rpartition(".")
        candidate, number = relative, 2
        while candidate in taken:
            candidate, number = f"{stem}_{number}{dot}{suffix}", number + 1
        target = self.root / candidate
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        self.copied[source] = candidate
        return candidate


def write_json(path: Path, items: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


# --- Med-R1: Splits/{modality,question_type}/{train,test}/<raw name>_{train,test}.json ------------------


def medr1_problem(record: VQARecord) -> str:
    """Med-R1's `problem`: "Q? A)opt, B)opt, ..." (no space after ')', one space after the stem)."""
    return f"{record.question} " + ", ".join(f"{letter}){text}" for letter, text in record.options.items())


def medr1_item(record: VQARecord, copier: ImageCopier) -> dict:
    """One record as a Med-R1 split item; its image copied to Images/<dataset>/<file name>."""
    image = copier.copy(record.images[0], f"Images/{record.source}/{Path(record.images[0]).name}")
    return {
        "image": image,
        "problem": medr1_problem(record),
        "solution": f"<answer> {record.answer} </answer>",
    }


def write_medr1_splits(splits: Splits, root: str | Path) -> Path:
    """Write `splits` as Med-R1's released Splits/ folder under `root`, images under root/Images; returns root.

    The same train/test partition is written twice, grouped by modality and by question type, plus the
    release's quirk: Splits/modality/train/unknown_train.json with one extra record (a CT-style question
    on the first training image) that is in no other file, so both split types read back exactly `splits`.
    """
    root = Path(root)
    copier = ImageCopier(root)
    for part, records in (("train", splits.train), ("test", splits.test)):
        items = [(record, medr1_item(record, copier)) for record in records]
        for kind, raw_names in (("modality", MODALITIES), ("question_type", QUESTION_TYPES)):
            for name, group in grouped(items, kind).items():
                raw = raw_names.get(name)
                if raw is None:
                    raise ValueError(f"record {group[0][0].id!r}: {kind} {name!r} has no raw OmniMedVQA name")
                write_json(root / "Splits" / kind / part / f"{raw}_{part}.json", [item for _, item in group])
    if not splits.train:
        raise ValueError("write_medr1_splits needs at least one training record (for the quirk file)")
    quirk = {
        "image": medr1_item(splits.train[0], copier)["image"],
        "problem": QUIRK_PROBLEM,
        "solution": QUIRK_SOLUTION,
    }
    write_json(root / "Splits" / "modality" / "train" / "unknown_train.json", [quirk])
    return root


def grouped(items: Iterable[tuple[VQARecord, dict]], kind: str) -> dict[str, list[tuple[VQARecord, dict]]]:
    """(record, item) pairs by the record's modality or question type, in input order."""
    groups: dict[str, list[tuple[VQARecord, dict]]] = {}
    for record, item in items:
        groups.setdefault(getattr(record, kind), []).append((record, item))
    return groups


# --- MedVLM-R1: HuatuoGPT-Vision evaluation data + MRI_CT_XRAY_300each_dataset.json -----------------------


def huatuo_row(record: VQARecord, copier: ImageCopier) -> dict:
    """One record as a row of HuatuoGPT-Vision's evaluation data; its image copied to images/<file name>."""
    return {
        "image": [copier.copy(record.images[0], f"images/{Path(record.images[0]).name}")],
        "question": record.question,
        "options": list(record.options.values()),
        "answer": record.options[record.answer],
        "dataset": "OmniMedVQA",
        "subset": MODALITIES[record.modality],
    }


def medvlm_test_item(record: VQARecord, copier: ImageCopier) -> dict:
    """One record as an item of MRI_CT_XRAY_300each_dataset.json (a Huatuo row plus problem and solution)."""
    row = huatuo_row(record, copier)
    lines = [f"{letter}) {text}" for letter, text in record.options.items()]
    return {
        "image": row["image"],
        "problem": record.question + "\n" + "\n".join(lines),
        "solution": record.answer,
        "question": row["question"],
        "options": row["options"],
        "answer": row["answer"],
        "dataset": row["dataset"],
        "subset": row["subset"],
    }


def write_medvlm_r1_folder(splits: Splits, root: str | Path) -> tuple[Path, Path]:
    """Write a HuatuoGPT-Vision-style folder and MedVLM-R1's released-format test file; returns (root, test file).

    root/medical_multimodel_evaluation_data.json holds every record (train, then test, as the real data
    holds the test items too) plus one row of another benchmark; images go to root/images/.
    root/MRI_CT_XRAY_300each_dataset.json holds the test records of MRI, then CT, then X-ray (as many as
    `splits` has, not 300 each). MedVLMR1(root=root, test_file=test_file) reads the test records back
    and trains on the MRI training records (the test items it passes over as overlapping).
    """
    root = Path(root)
    copier = ImageCopier(root)
    rows = [huatuo_row(record, copier) for record in splits.train + splits.test]
    if not any(record.modality == "mri" for record in splits.train):
        raise ValueError("write_medvlm_r1_folder needs MRI training records (MedVLM-R1 trains on MRI)")
    other = dict(rows[0], dataset="PMC-VQA_test", subset="", question="Which benchmark is this row from?")
    write_json(root / HUATUO_FILE, [*rows, other])
    tests = [record for name in MEDVLM_TEST_MODALITIES for record in splits.test if record.modality == name]
    test_file = write_json(root / MEDVLM_TEST_FILE, [medvlm_test_item(record, copier) for record in tests])
    return root, test_file
