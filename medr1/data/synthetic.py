"""A synthetic medical VQA set, generated offline and written in OmniMedVQA's raw format.

Why: tests and the offline demo need data that a ~1M-parameter model can LEARN with RL in minutes, in
the exact format of the real data, so that the real reader (medr1.data.omnimedvqa) is what loads it.

What: 8 modalities x 5 question types, `size` questions per pair, one image per question. A tiny
Qwen2-VL-style model sees a 56 px image as 4 merged tokens, one per quadrant, so:
- every modality has its own global colour and texture (CT grey disc on black, MRI lavender oval,
  X-ray light with ribs, ultrasound amber fan, dermoscopy skin with a brown pigment network inside the
  lens's dark rim, fundus orange disc, OCT teal layers, microscopy pink with purple dots), recognisable
  from any quadrant;
- each image has latent facts: a green lesion (present or not) of grade 1-3 (small/medium/large) in
  one quadrant, and 1-3 small blue objects, each alone in another quadrant;
- each question type asks about one fact, so every answer can be read off the image:
  modality_recognition (4 options), disease_diagnosis (Normal / Lesion present),
  lesion_grading (3 grades), anatomy_identification (4 quadrants), biological_attribute (1, 2, 3).
Options come in a natural fixed order by default (modality recognition offers a fixed family of 4), so
the answer letter is a function of the image; `shuffle_options=True` shuffles them, and modality
recognition then draws 3 distractors from all 8 modalities: the harder setting. Answers are balanced:
each class appears equally often (up to rounding) within a modality and question type.

Output: <root>/QA_information/Open-access/<source>.json with OmniMedVQA's field names (gt_answer is
the option text, modality_type the raw string), <root>/Images/<source>/<question type>/<id>.png and
<root>/manifest.json with the generation parameters. The set is generated in a temporary folder next
to root and renamed into place; it is reused when the manifest matches, regenerated when only the
generator version differs, and an error when the parameters differ.

    python -m medr1.data.synthetic --root /tmp/synthetic --size 40
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from medr1.cache import write_atomically
from medr1.data.names import MODALITIES, MODALITY_DISPLAY, QUESTION_TYPES
from medr1.data.omnimedvqa import OmniMedVQA
from medr1.data.records import Splits

log = logging.getLogger(__name__)

GENERATOR_VERSION = 4  # bump when the generated content changes, so stale folders are not reused
FAMILIES = (("ct", "mri", "xray", "ultrasound"), ("dermoscopy", "fundus", "oct", "microscopy"))
DIAGNOSIS_OPTIONS = ("Normal", "Lesion present")
GRADE_OPTIONS = ("Grade 1 (small)", "Grade 2 (medium)", "Grade 3 (large)")
QUADRANT_OPTIONS = ("Upper left", "Upper right", "Lower left", "Lower right")  # quadrant index order
COUNT_OPTIONS = ("1", "2", "3")

LESION_COLOUR = np.array([30.0, 235.0, 40.0])  # saturated green: unlike every modality's palette
OBJECT_COLOUR = np.array([40.0, 70.0, 255.0])  # saturated blue, likewise
# Fractions of the image side (a quadrant is 0.5 wide). A 56 px image is 4 image tokens of 28 px, so a
# fact must cover a good part of a token for a tiny vision tower to see it (4 px lesions were not
# learnt even by SFT on true labels: docs/notes.md).
LESION_RADIUS = {1: 0.12, 2: 0.17, 3: 0.22}
OBJECT_SIDE = 0.16
OPTION_COUNT = {
    "modality_recognition": 4,
    "disease_diagnosis": len(DIAGNOSIS_OPTIONS),
    "lesion_grading": len(GRADE_OPTIONS),
    "anatomy_identification": len(QUADRANT_OPTIONS),
    "biological_attribute": len(COUNT_OPTIONS),
}


class SyntheticMedVQA:
    """Generates (or reuses) the synthetic set under `root`, then reads it with the OmniMedVQA reader."""

    def __init__(
        self,
        *,
        root: str | Path,
        size: int = 40,
        image_size: int = 56,
        seed: int = 0,
        shuffle_options: bool = False,
        split_by: str = "modality",
        test_fraction: float = 0.2,
        on_bad_record: str = "raise",
        verify_images: bool = True,
    ):
        if size < 1:
            raise ValueError(f"data.size (questions per modality and question type) must be >= 1, got {size}")
        if image_size < 16 or image_size % 2:
            raise ValueError(
                f"data.image_size must be even and >= 16 (56 = 2x2 tokens of 28 px), got {image_size}"
            )
        self.root = Path(root).expanduser().resolve()
        self.params = {
            "generator": "medr1.data.synthetic",
            "version": GENERATOR_VERSION,
            "size": int(size),
            "image_size": int(image_size),
            "seed": int(seed),
            "shuffle_options": bool(shuffle_options),
        }
        self.reader = OmniMedVQA(
            root=self.root,
            split_by=split_by,
            test_fraction=test_fraction,
            seed=seed,
            on_bad_record=on_bad_record,
            verify_images=verify_images,
            access=("Open-access",),
        )

    def load(self) -> Splits:
        ensure_generated(self.root, self.params)
        return self.reader.load()


# --- folder management ----------------------------------------------------------------------------


def ensure_generated(root: Path, params: dict) -> None:
    """Generate the set into `root` unless it already holds one made with `params`.

    A folder this generator made with other parameters is an error; one made by an older version of
    the generator with the same parameters is stale derived data, and is regenerated.
    """
    stale = False
    if root.exists():
        found = manifest_params(root)
        if found == params:
            log.info("synthetic: reusing %s", root)
            return
        if {**found, "version": params["version"]} != params:
            raise FileExistsError(
                f"{root} holds a synthetic data set generated with different parameters: found {found}, "
                f"asked for {params}. Delete the folder or choose another data.root."
            )
        log.warning(
            "synthetic: %s was made by generator version %s; regenerating", root, found.get("version")
        )
        stale = True
    write_atomically(  # readers never see a half-written set
        root,
        lambda folder: write_dataset(folder, params),
        complete=lambda folder: folder.exists() and manifest_params(folder) == params,
        replace=stale,
    )


def manifest_params(root: Path) -> dict:
    """The generation parameters recorded in `root`/manifest.json; an error if it has none."""
    manifest_path = root / "manifest.json"
    try:
        found = json.loads(manifest_path.read_text(encoding="utf-8"))["params"]
        if found.get("generator") != "medr1.data.synthetic":
            raise ValueError(found)
        return found
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise FileExistsError(
            f"{root} exists but is not a synthetic data set (no readable {manifest_path.name} from "
            "medr1.data.synthetic); point data.root at a new folder or at one this generator made"
        ) from None


def write_dataset(folder: Path, params: dict) -> None:
    """Render every image and write the per-source JSON files and the manifest into `folder`."""
    rng = np.random.default_rng(params["seed"])
    questions = generate_questions(params["size"], params["shuffle_options"], rng)
    by_source: dict[str, list[dict]] = {}
    for question in tqdm(questions, desc="synthetic images", unit="image", disable=None):
        image_path = folder / question.item["image_path"]
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render(question.scene, params["image_size"], rng)).save(image_path, format="PNG")
        by_source.setdefault(question.item["dataset"], []).append(question.item)
    qa_folder = folder / "QA_information" / "Open-access"
    qa_folder.mkdir(parents=True, exist_ok=True)
    for source, items in by_source.items():
        (qa_folder / f"{source}.json").write_text(json.dumps(items, indent=1), encoding="utf-8")
    manifest = {"params": params, "questions": len(questions)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")


# --- questions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """The latent facts of one image."""

    modality: str
    lesion_quadrant: int | None  # 0 upper left, 1 upper right, 2 lower left, 3 lower right; None = no lesion
    grade: int  # 1..3, the lesion's size
    count: int  # 1..3 small objects


@dataclass(frozen=True)
class Question:
    scene: Scene
    item: dict  # the OmniMedVQA-format item


def generate_questions(size: int, shuffle_options: bool, rng: np.random.Generator) -> list[Question]:
    """`size` questions for every modality x question type, in a fixed order."""
    questions = []
    for modality in MODALITIES:
        for question_type in QUESTION_TYPES:
            classes = balanced(len(class_options(question_type, modality)), size, rng)
            positions = balanced(OPTION_COUNT[question_type], size, rng)  # where a shuffled answer goes
            for index in range(size):
                scene, stem, options, answer = ASK[question_type](modality, int(classes[index]), rng)
                if shuffle_options:
                    options = shuffled_options(
                        question_type, modality, options, answer, int(positions[index]), rng
                    )
                question_id = f"synthetic_{modality}_{question_type}_{index:04d}"
                item = omnimedvqa_item(question_id, modality, question_type, stem, options, answer)
                questions.append(Question(scene, item))
    return questions


def balanced(classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` class indices, each class equally often (up to rounding), in random order."""
    return rng.permutation(np.resize(np.arange(classes), size))


def class_options(question_type: str, modality: str) -> tuple[str, ...]:
    if question_type == "modality_recognition":
        return (MODALITY_DISPLAY[modality],)  # the answer is fixed by the modality: one class
    return {
        "disease_diagnosis": DIAGNOSIS_OPTIONS,
        "lesion_grading": GRADE_OPTIONS,
        "anatomy_identification": QUADRANT_OPTIONS,
        "biological_attribute": COUNT_OPTIONS,
    }[question_type]


def random_scene(modality: str, rng: np.random.Generator, **facts) -> Scene:
    """A scene with the given facts and the others drawn at random."""
    lesion = facts.pop("lesion", rng.random() < 0.5)
    quadrant = facts.pop("lesion_quadrant", int(rng.integers(4)))
    return Scene(
        modality=modality,
        lesion_quadrant=quadrant if lesion else None,
        grade=facts.pop("grade", int(rng.integers(1, 4))),
        count=facts.pop("count", int(rng.integers(1, 4))),
    )


def ask_modality(modality: str, _: int, rng: np.random.Generator):
    family = next(family for family in FAMILIES if modality in family)
    options = [MODALITY_DISPLAY[name] for name in family]
    return random_scene(modality, rng), "Which imaging modality is this?", options, MODALITY_DISPLAY[modality]


def ask_diagnosis(modality: str, cls: int, rng: np.random.Generator):
    stem = f"What is the finding in this {MODALITY_DISPLAY[modality]} image?"
    return random_scene(modality, rng, lesion=cls == 1), stem, list(DIAGNOSIS_OPTIONS), DIAGNOSIS_OPTIONS[cls]


def ask_grade(modality: str, cls: int, rng: np.random.Generator):
    stem = f"What is the grade of the lesion in this {MODALITY_DISPLAY[modality]} image?"
    return (
        random_scene(modality, rng, lesion=True, grade=cls + 1),
        stem,
        list(GRADE_OPTIONS),
        GRADE_OPTIONS[cls],
    )


def ask_location(modality: str, cls: int, rng: np.random.Generator):
    stem = f"Where is the lesion located in this {MODALITY_DISPLAY[modality]} image?"
    scene = random_scene(modality, rng, lesion=True, lesion_quadrant=cls)
    return scene, stem, list(QUADRANT_OPTIONS), QUADRANT_OPTIONS[cls]


def ask_count(modality: str, cls: int, rng: np.random.Generator):
    stem = f"How many small blue objects are visible in this {MODALITY_DISPLAY[modality]} image?"
    return random_scene(modality, rng, count=cls + 1), stem, list(COUNT_OPTIONS), COUNT_OPTIONS[cls]


ASK: dict[str, Callable] = {
    "modality_recognition": ask_modality,
    "disease_diagnosis": ask_diagnosis,
    "lesion_grading": ask_grade,
    "anatomy_identification": ask_location,
    "biological_attribute": ask_count,
}


def shuffled_options(
    question_type: str,
    modality: str,
    options: list[str],
    answer: str,
    position: int,
    rng: np.random.Generator,
) -> list[str]:
    """Options in random order with the answer at `position`, which the caller balances across letters."""
    if question_type == "modality_recognition":
        others = [MODALITY_DISPLAY[name] for name in MODALITIES if name != modality]
        options = [answer, *rng.choice(others, size=3, replace=False).tolist()]
    distractors = [option for option in options if option != answer]
    distractors = [distractors[i] for i in rng.permutation(len(distractors))]
    distractors.insert(position, answer)
    return distractors


def omnimedvqa_item(
    question_id: str, modality: str, question_type: str, stem: str, options: list[str], answer: str
) -> dict:
    """One item with exactly OmniMedVQA's field names; absent options have no key, as in the release."""
    source = f"Synthetic {MODALITY_DISPLAY[modality]}"
    item = {
        "dataset": source,
        "question_id": question_id,
        "question_type": QUESTION_TYPES[question_type],
        "question": stem,
        "gt_answer": answer,
        "image_path": f"Images/{source}/{question_type}/{question_id}.png",
    }
    item.update({f"option_{letter}": text for letter, text in zip("ABCD", options, strict=False)})
    item["modality_type"] = MODALITIES[modality]
    return item


# --- rendering ------------------------------------------------------------------------------------


def render(scene: Scene, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """The image of `scene`: modality background, then lesion and objects, then mild noise. [H, W, 3] uint8"""
    y, x = np.mgrid[0:image_size, 0:image_size].astype(np.float64)
    y, x = (y + 0.5) / image_size, (x + 0.5) / image_size  # pixel centres in [0, 1]
    canvas = BACKGROUNDS[scene.modality](y, x, rng)
    pixel = 1.0 / image_size
    free = [quadrant for quadrant in range(4) if quadrant != scene.lesion_quadrant]
    if scene.lesion_quadrant is not None:
        radius = LESION_RADIUS[scene.grade]
        cy, cx = point_in_quadrant(scene.lesion_quadrant, radius, rng)
        paint(canvas, disc(y, x, cy, cx, radius, pixel), LESION_COLOUR)
    for quadrant in sorted(rng.choice(free, size=scene.count, replace=False).tolist()):
        cy, cx = point_in_quadrant(quadrant, OBJECT_SIDE / 2, rng)
        square = (np.abs(y - cy) <= OBJECT_SIDE / 2) & (np.abs(x - cx) <= OBJECT_SIDE / 2)
        paint(canvas, square.astype(np.float64), OBJECT_COLOUR)
    canvas += rng.normal(0.0, 4.0, canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def point_in_quadrant(quadrant: int, half_extent: float, rng: np.random.Generator) -> tuple[float, float]:
    """A random centre that keeps a shape of `half_extent` inside the quadrant, with a small margin."""
    top, left = 0.5 * (quadrant // 2), 0.5 * (quadrant % 2)
    slack = max(0.25 - half_extent - 0.03, 0.0)
    return top + 0.25 + rng.uniform(-slack, slack), left + 0.25 + rng.uniform(-slack, slack)


def disc(y, x, cy: float, cx: float, radius: float, pixel: float) -> np.ndarray:
    """Coverage of a disc, anti-aliased over about one pixel. [H, W] in [0, 1]"""
    distance = np.hypot(y - cy, x - cx)
    return np.clip((radius - distance) / pixel + 0.5, 0.0, 1.0)


def ellipse(y, x, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0).astype(np.float64)


def paint(canvas: np.ndarray, coverage: np.ndarray, colour) -> None:
    """Blend `colour` into `canvas` where `coverage` > 0, in place."""
    coverage = coverage[..., None]
    canvas *= 1.0 - coverage
    canvas += coverage * np.asarray(colour, dtype=np.float64)


def filled(y, colour) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, dtype=np.float64), (*y.shape, 3)).copy()


def ct_background(y, x, rng):
    canvas = filled(y, (0, 0, 0))
    paint(canvas, disc(y, x, 0.5, 0.5, 0.47, 0.01), (125, 125, 125))  # body cross-section
    paint(canvas, ellipse(y, x, 0.72, 0.5, 0.07, 0.09), (200, 200, 200))  # spine: bright bone
    paint(
        canvas, 0.6 * ellipse(y, x, 0.45, 0.33 + rng.uniform(-0.02, 0.02), 0.14, 0.10), (70, 70, 70)
    )  # organ
    return canvas


def mri_background(y, x, rng):
    canvas = filled(y, (35, 35, 45))
    rings = 0.85 + 0.15 * np.sin(np.hypot(y - 0.5, x - 0.5) * 45.0 + rng.uniform(0, np.pi))
    head = ellipse(y, x, 0.5, 0.5, 0.47, 0.44)
    paint(canvas, head, (180, 172, 210))
    canvas *= np.where(head > 0, rings, 1.0)[..., None]  # gyri-like concentric texture
    return canvas


def xray_background(y, x, rng):
    canvas = filled(y, (205, 205, 200))  # soft tissue: light
    shift = rng.uniform(-0.02, 0.02)
    lungs = ellipse(y, x, 0.45 + shift, 0.28, 0.32, 0.17) + ellipse(y, x, 0.45 + shift, 0.72, 0.32, 0.17)
    paint(canvas, lungs, (75, 75, 75))  # air: dark
    ribs = lungs * (np.sin(y * 32.0 + rng.uniform(0, np.pi)) > 0.55)
    paint(canvas, 0.5 * ribs, (190, 190, 185))
    paint(canvas, (np.abs(x - 0.5) < 0.04).astype(np.float64), (235, 235, 230))  # spine: bright bone
    return canvas


def ultrasound_background(y, x, rng):
    canvas = filled(y, (0, 0, 0))
    dy, dx = y + 0.1, x - 0.5  # apex of the fan just above the image
    fan = (
        (np.abs(np.arctan2(dx, dy)) < np.radians(50)) & (np.hypot(dy, dx) > 0.15) & (np.hypot(dy, dx) < 1.05)
    )
    speckle = rng.uniform(0.6, 1.25, y.shape)
    paint(canvas, fan.astype(np.float64), (190, 150, 85))
    canvas *= np.where(fan, speckle, 1.0)[..., None]
    return canvas


def dermoscopy_background(y, x, rng):
    canvas = filled(y, (226, 168, 128))
    warp = 0.04 * np.sin(np.stack([y, x]) * 7.0 + rng.uniform(0, np.pi, size=(2, 1, 1)))
    mesh = np.minimum(np.abs(np.sin((x + warp[0]) * 34.0)), np.abs(np.sin((y + warp[1]) * 34.0)))
    paint(canvas, 0.7 * (mesh < 0.3), (125, 72, 40))  # brown pigment network
    paint(canvas, 0.25 * (rng.random(y.shape) < 0.08), (180, 120, 95))  # skin texture
    lens = np.clip(1.0 - 2.2 * (np.hypot(y - 0.5, x - 0.5) - 0.45), 0.25, 1.0)  # the dermatoscope's dark rim
    return canvas * lens[..., None]


def fundus_background(y, x, rng):
    canvas = filled(y, (0, 0, 0))
    paint(canvas, disc(y, x, 0.5, 0.5, 0.47, 0.01), (205, 88, 35))  # retina
    vessels = np.abs(np.sin((x - 0.5) * 9.0 + rng.uniform(0, np.pi)) * 0.15 - (y - 0.5)) < 0.012
    paint(canvas, 0.8 * vessels * disc(y, x, 0.5, 0.5, 0.47, 0.01), (120, 25, 15))
    paint(canvas, disc(y, x, 0.5, 0.5, 0.05, 0.01), (245, 195, 120))  # optic disc, centred: no quadrant
    return canvas


def oct_background(y, x, rng):
    canvas = filled(y, (18, 24, 36))
    wave = 0.03 * np.sin(x * 6.0 + rng.uniform(0, np.pi))
    layers = 0.5 + 0.5 * np.sin((y + wave) * 40.0)
    retina = ((y + wave) > 0.1) & ((y + wave) < 0.9)
    paint(canvas, retina * (0.45 + 0.55 * layers), (70, 178, 168))  # layered bands
    return canvas


def microscopy_background(y, x, rng):
    canvas = filled(y, (236, 186, 216))
    for cy, cx in rng.uniform(0.0, 1.0, size=(28, 2)):
        paint(canvas, disc(y, x, cy, cx, 0.028, 0.01), (125, 55, 150))  # stained nuclei
    return canvas


BACKGROUNDS: dict[str, Callable] = {
    "ct": ct_background,
    "mri": mri_background,
    "xray": xray_background,
    "ultrasound": ultrasound_background,
    "dermoscopy": dermoscopy_background,
    "fundus": fundus_background,
    "oct": oct_background,
    "microscopy": microscopy_background,
}


# --- command line ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Generate the synthetic medical VQA set and print its counts."
    )
    parser.add_argument(
        "--root", required=True, help="output folder (reused if generated with the same settings)"
    )
    parser.add_argument("--size", type=int, default=40, help="questions per modality and question type")
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shuffle-options", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    splits = SyntheticMedVQA(
        root=args.root,
        size=args.size,
        image_size=args.image_size,
        seed=args.seed,
        shuffle_options=args.shuffle_options,
    ).load()
    records = splits.train + splits.test
    counts = Counter((record.modality, record.question_type) for record in records)
    print(
        f"{len(records)} questions in {Path(args.root).resolve()}: {len(splits.train)} train, {len(splits.test)} test"
    )
    for modality in MODALITIES:
        print(
            f"  {modality:<11}", "  ".join(f"{qtype}={counts[modality, qtype]}" for qtype in QUESTION_TYPES)
        )


if __name__ == "__main__":
    main()
