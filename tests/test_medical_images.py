"""DICOM and NIfTI files through the readers, the collator and the tiny model: the files are written
here with pydicom and nibabel, and the tests check the pixels that reach the processor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medr1.data.batches import PromptCollator
from medr1.data.images import ImageSettings, load_images, spread_indices, to_ras
from medr1.data.omnimedvqa import OmniMedVQA
from medr1.data.records import BadRecordError, ImageChecker, VQARecord, usable_image
from medr1.models.loading import load_model, load_processor
from tests.helpers.config import compose_config
from tests.helpers.scans import volume_pattern, write_dicom, write_nifti, write_series

# window [127.5, 255] maps 0..255 onto itself: stored integers come out as they went in
IDENTITY = (127.5, 255.0)
# HU of the four quadrants of the CT test slice: air, lung, soft tissue, bone
QUADRANTS_HU = (-1000, -600, 40, 1000)


# --- writers --------------------------------------------------------------------------------------


def quadrants(values, size: int = 8) -> np.ndarray:
    """A size x size slice whose four quadrants hold `values` (top-left, top-right, bottom-left, bottom-right)."""
    half = size // 2
    out = np.empty((size, size))
    out[:half, :half], out[:half, half:], out[half:, :half], out[half:, half:] = values
    return out


def ct_slice(path: Path, *, slope: float = 2.0, intercept: float = -1024.0, **attributes) -> Path:
    """The quadrant slice of QUADRANTS_HU, stored as (HU - intercept) / slope."""
    stored = (quadrants(QUADRANTS_HU) - intercept) / slope
    return write_dicom(
        path, stored.astype(np.uint16), RescaleSlope=slope, RescaleIntercept=intercept, **attributes
    )


def displayed(plane: np.ndarray) -> np.ndarray:
    """A RAS plane as shown: transposed, flipped both ways."""
    return plane.T[::-1, ::-1]


def grey(image: Image.Image) -> np.ndarray:
    """The grey levels of an RGB image whose three channels are equal."""
    pixels = np.asarray(image)
    assert image.mode == "RGB" and (pixels == pixels[..., :1]).all()
    return pixels[..., 0].astype(int)


def levels(images: list[Image.Image]) -> list[int]:
    """The mean grey level of each image (the test slices are uniform)."""
    return [int(grey(image).mean()) for image in images]


def corners(image: Image.Image) -> list[int]:
    """The grey level of each quadrant of an 8 x 8 quadrant slice."""
    pixels = grey(image)
    return [int(pixels[0, 0]), int(pixels[0, -1]), int(pixels[-1, 0]), int(pixels[-1, -1])]


def load(path, *, window=None, axis: int = 2, slices: int = 1, **kwargs) -> list[Image.Image]:
    return load_images(path, "rec-1", ImageSettings(window=window, axis=axis, slices=slices), **kwargs)


# --- settings -------------------------------------------------------------------------------------


def test_settings_come_from_the_config_block_and_name_the_bad_key():
    assert ImageSettings.from_config(compose_config([]).image) == ImageSettings(window=None, axis=2, slices=1)
    chosen = ImageSettings.from_config(compose_config(["image.window=[40,400]", "image.slices=3"]).image)
    assert chosen.window == (40.0, 400.0) and chosen.center_width == (40.0, 400.0) and chosen.slices == 3
    assert ImageSettings.from_config({"window": "lung"}).center_width == (-600.0, 1500.0)
    assert ImageSettings.from_config(None) == ImageSettings()
    for bad, key in (
        ({"window": "lungs"}, "image.window='lungs'.*lung \\| mediastinum \\| bone"),
        ({"window": [40]}, "image.window=.*center, width"),
        ({"window": [40, 0]}, "width > 0"),
        ({"window": True}, "image.window"),
        ({"axis": -1}, "image.axis=-1.*0 sagittal, 1 coronal or 2 axial"),
        ({"axis": "2"}, "image.axis"),
        ({"slices": 0}, "image.slices=0 must be an int >= 1"),
        ({"slice": 3}, "unknown keys \\['slice'\\]"),
    ):
        with pytest.raises(ValueError, match=key):
            ImageSettings.from_config(bad)


def test_slices_are_spread_over_the_depth_from_near_one_end_to_near_the_other():
    assert spread_indices(5, 1) == [2] and spread_indices(4, 1) == [2]
    assert spread_indices(5, 3) == [0, 2, 4]
    assert spread_indices(10, 3) == [1, 5, 8]
    assert spread_indices(6, 3) == [1, 3, 5]
    assert spread_indices(3, 8) == [0, 1, 2]  # never more images than slices


# --- DICOM ----------------------------------------------------------------------------------------


def test_ct_hu_values_map_to_8_bits_under_presets_and_the_files_own_window(tmp_path):
    # stored x 2 - 1024 = HU; levels: floor((HU - (center - width/2)) / width * 255 + 0.5), clipped
    path = ct_slice(tmp_path / "ct.dcm", WindowCenter=[40, -600], WindowWidth=[400, 1500])
    assert corners(load(path, window="lung")[0]) == [60, 128, 236, 255]  # -1350..150 HU
    assert corners(load(path, window="bone")[0]) == [0, 0, 77, 213]  # -500..1300 HU
    assert corners(load(path, window=[0, 2000])[0]) == [0, 51, 133, 255]  # -1000..1000 HU
    assert corners(load(path)[0]) == [0, 0, 128, 255]  # the file's first window: 40 / 400


def test_without_any_window_each_slice_spans_its_own_min_to_max(tmp_path):
    path = ct_slice(tmp_path / "ct.dcm")
    assert corners(load(path)[0]) == [0, 51, 133, 255]  # -1000..1000 HU, the slice's range


def test_monochrome1_is_inverted(tmp_path):
    stored = ((quadrants(QUADRANTS_HU) + 1024) / 2).astype(np.uint16)
    path = write_dicom(
        tmp_path / "cr.dcm",
        stored,
        photometric="MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=40,
        WindowWidth=400,
    )
    assert corners(load(path)[0]) == [255, 255, 127, 0]
    assert corners(load(path, window="lung")[0]) == [195, 127, 19, 0]


def test_rgb_dicom_passes_through(tmp_path):
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[..., 0], colour[..., 2] = 200, 30
    path = write_dicom(tmp_path / "photo.dcm", colour, photometric="RGB", PlanarConfiguration=0)
    (image,) = load(path, window="lung")
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), colour)


def test_a_series_folder_is_read_in_position_order_whatever_the_file_order(tmp_path):
    folder = write_series(tmp_path / "series", [0, 100, 200, 300, 400])
    # window 200 / 400 = 0..400 HU: slice k (k x 100 HU) is at k x 63.75
    assert levels(load(folder, window=[200, 400], slices=5)) == [0, 64, 128, 191, 255]
    assert levels(load(folder, window=[200, 400])) == [128]  # the middle slice
    assert levels(load(folder, window=[200, 400], slices=3)) == [0, 128, 255]
    by_number = write_series(tmp_path / "numbered", [0, 100, 200, 300, 400], positions=False)
    assert levels(load(by_number, window=[200, 400], slices=5)) == [0, 64, 128, 191, 255]


def test_a_multi_frame_file_is_a_volume(tmp_path):
    stored = np.stack([np.full((8, 8), 1024 + 100 * k, dtype=np.uint16) for k in range(4)])
    path = write_dicom(tmp_path / "multi.dcm", stored, RescaleSlope=1, RescaleIntercept=-1024)
    images = load(path, window=[200, 400], slices=2)
    assert levels(images) == [64, 191]  # frames 1 and 3 of 0..3
    assert levels(load(path, window=[200, 400])) == [128]  # frame 2


# --- NIfTI ----------------------------------------------------------------------------------------


def test_nifti_slices_along_the_chosen_axis_shown_as_radiologists_read_them(tmp_path):
    data = volume_pattern()
    path = write_nifti(tmp_path / "volume.nii", data)
    axial = load(path, window=IDENTITY, slices=3)  # axis 2: slices 1, 3, 5 of 6
    assert [grey(image).tolist() for image in axial] == [displayed(data[:, :, z]).tolist() for z in (1, 3, 5)]
    assert axial[0].size == (4, 5)  # width: x (4 voxels), height: y (5)
    # patient's right (largest x) on the viewer's left, anterior (largest y) at the top
    assert grey(axial[0])[0, 0] == data[3, 4, 1] and grey(axial[0])[-1, -1] == data[0, 0, 1]
    sagittal = load(path, window=IDENTITY, axis=0)
    assert grey(sagittal[0]).tolist() == displayed(data[2]).tolist() and sagittal[0].size == (5, 6)
    coronal = load(path, window=IDENTITY, axis=1, slices=5)
    assert [grey(image).tolist() for image in coronal] == [displayed(data[:, y]).tolist() for y in range(5)]


def test_nifti_stored_in_another_orientation_shows_the_same_picture(tmp_path):
    data = volume_pattern()
    ras = load(write_nifti(tmp_path / "ras.nii", data), window=IDENTITY, slices=2)
    las = write_nifti(tmp_path / "las.nii", data[::-1].copy(), np.diag([-1.0, 1.0, 1.0, 1.0]))
    lpi_zyx = np.transpose(data[::-1, ::-1, ::-1], (2, 1, 0)).copy()  # voxel axes z, y, x, all reversed
    flipped = np.array([[0, 0, -1, 0], [0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1.0]])
    zyx = write_nifti(tmp_path / "zyx.nii.gz", lpi_zyx, flipped)
    for other in (las, zyx):
        pictures = [grey(image).tolist() for image in load(other, window=IDENTITY, slices=2)]
        assert pictures == [grey(image).tolist() for image in ras]


def test_nifti_without_a_window_spans_the_volume_min_to_max(tmp_path):
    data = np.zeros((4, 4, 5), dtype=np.float32)
    for z in range(5):
        data[..., z] = -1000 + 500 * z  # -1000 .. 1000
    path = write_nifti(tmp_path / "ct.nii.gz", data)
    assert levels(load(path, slices=5)) == [0, 64, 128, 191, 255]
    assert levels(load(path, window="lung", slices=5)) == [60, 145, 230, 255, 255]


def test_2d_and_4d_nifti(tmp_path):
    plane = volume_pattern()[:, :, 0]
    flat = load(write_nifti(tmp_path / "plane.nii.gz", plane), window=IDENTITY, slices=3, axis=0)
    assert len(flat) == 1 and grey(flat[0]).tolist() == displayed(plane).tolist()  # 2-D: one image, any axis
    mirrored = write_nifti(tmp_path / "las.nii", plane[::-1, :, None].copy(), np.diag([-1.0, 1.0, 1.0, 1.0]))
    assert grey(load(mirrored, window=IDENTITY)[0]).tolist() == displayed(plane).tolist()  # one slice thick
    assert to_ras(np.diag([1.0, 1.0, 0.0, 1.0])).tolist() == [[0, 1], [1, 1], [2, 1]]  # no direction: kept
    series = np.stack([volume_pattern(), volume_pattern() + 100], axis=-1)  # [x, y, z, t]
    first = load(write_nifti(tmp_path / "time.nii", series), window=IDENTITY)  # first volume, middle slice
    assert grey(first[0]).tolist() == displayed(volume_pattern()[:, :, 3]).tolist()


# --- pixel budget and resize ----------------------------------------------------------------------


def test_the_slices_of_a_file_share_one_images_pixel_budget(tmp_path):
    noise = np.random.default_rng(0).normal(size=(112, 84, 9)).astype(np.float32)
    path = write_nifti(tmp_path / "big.nii", noise)
    alone = load(path, max_pixels=3 * 3136)
    assert [image.size for image in alone] == [(112, 84)]  # one image: the processor's budget applies
    three = load(path, slices=3, max_pixels=3 * 3136)
    assert all(image.width * image.height <= 3136 for image in three)
    assert [image.size for image in three] == [(64, 48)] * 3  # aspect 4:3 kept
    assert [image.size for image in load(path, slices=3)] == [(112, 84)] * 3  # no budget given
    resized = load(path, slices=2, resize=100, max_pixels=10_000)
    assert [image.size for image in resized] == [(70, 70)] * 2  # resized first, then within 5000 each


def test_pictures_are_read_as_before(tmp_path):
    path = tmp_path / "scan.png"
    Image.new("L", (30, 20), 77).save(path)
    (image,) = load(path, window="lung", slices=4, max_pixels=100)
    assert image.mode == "RGB" and image.size == (30, 20) and grey(image).min() == 77


# --- bad files ------------------------------------------------------------------------------------


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, dict]]:
    """name -> (path, settings) of files and folders that cannot be read."""
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 3)
    truncated = ct_slice(tmp_path / "whole.dcm")
    cut = tmp_path / "truncated.dcm"
    cut.write_bytes(truncated.read_bytes()[:-40])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    mixed = write_series(tmp_path / "mixed", [0, 100])
    write_series(tmp_path / "other", [0, 100], series_uid="1.2.3.4")
    for file in (tmp_path / "other").iterdir():
        file.rename(mixed / f"other-{file.name}")
    broken_gz = tmp_path / "broken.nii.gz"
    broken_gz.write_bytes(write_nifti(tmp_path / "good.nii.gz", volume_pattern()).read_bytes()[:60])
    return {
        "corrupt DICOM": (corrupt, {}),
        "truncated DICOM": (cut, {}),
        "empty folder": (empty, {}),
        "mixed series": (mixed, {}),
        "broken NIfTI": (broken_gz, {}),
        "axis out of range": (tmp_path / "good.nii.gz", {"axis": 3}),
        "not an image": (tmp_path / "notes.png", {}),
    }


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns while it parses the corrupt file
@pytest.mark.parametrize(
    "name, message",
    [
        ("corrupt DICOM", "no image|cannot be read"),
        ("truncated DICOM", "pixel data cannot be decoded"),
        ("empty folder", "holds no DICOM files"),
        ("mixed series", "mixes 2 DICOM series.*its own folder"),
        ("broken NIfTI", "NIfTI file cannot be read"),
        ("axis out of range", "image.axis=3 is out of range.*set image.axis to 0"),
        ("not an image", "image cannot be read"),
    ],
)
def test_bad_files_name_the_file_the_record_and_the_fix(tmp_path, name, message):
    (tmp_path / "notes.png").write_text("not a picture")
    path, settings = bad_files(tmp_path)[name]
    with pytest.raises(BadRecordError, match=message) as caught:
        load_images(path, "rec-7", ImageSettings(**settings))
    assert str(path) in str(caught.value) and "'rec-7'" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_readers_accept_series_folders_and_nifti_and_reject_folders_without_dicom(tmp_path):
    root = tmp_path / "root"
    write_series(root / "Images" / "series", [0, 100, 200])
    write_nifti(root / "Images" / "head.nii.gz", volume_pattern())
    (root / "Images" / "empty").mkdir()
    checker = ImageChecker()
    for relative in ("Images/series", "Images/head.nii.gz"):
        assert usable_image(root, relative, checker) == (root / relative).resolve()
        assert ImageChecker(verify=False).problem(root / relative) is None
    with pytest.raises(ValueError, match="holds no DICOM files"):
        usable_image(root, "Images/empty", checker)
    (root / "Images" / "cut.nii.gz").write_bytes(b"\x1f\x8b" + b"\0" * 10)
    assert "unreadable NIfTI" in checker.problem(root / "Images" / "cut.nii.gz")
    assert ImageChecker(verify=False).problem(root / "Images" / "cut.nii.gz") is None  # existence only

    items = [
        {
            "dataset": "Chest CT Scan",
            "question_id": f"Chest CT Scan_{number}",
            "question_type": "Modality Recognition",
            "question": "Which modality?",
            "gt_answer": "CT",
            "image_path": image,
            "option_A": "CT",
            "option_B": "MRI",
            "modality_type": "CT(Computed Tomography)",
        }
        for number, image in enumerate(["Images/series", "Images/head.nii.gz"] * 3)
    ]
    (root / "QA_information" / "Open-access").mkdir(parents=True)
    (root / "QA_information" / "Open-access" / "ct.json").write_text(json.dumps(items))
    splits = OmniMedVQA(root=root).load()
    assert splits.skipped == 0
    assert {Path(r.images[0]).name for r in splits.train + splits.test} == {"series", "head.nii.gz"}


# --- through the collator and the model -----------------------------------------------------------


class RecordingProcessor:
    """The real processor, keeping the images of its last call."""

    def __init__(self, processor):
        self.inner, self.images = processor, []

    def __call__(self, *, images, **kwargs):
        self.images = list(images)
        return self.inner(images=images, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def record(record_id: str, image: Path) -> VQARecord:
    return VQARecord(
        id=record_id,
        images=(str(image),),
        question="Which modality?",
        options={"A": "CT", "B": "MRI"},
        answer="A",
        modality="ct",
        question_type="modality_recognition",
        source="test",
    )


@pytest.fixture(scope="module")
def processor(tiny_path):
    return load_processor(compose_config([]).model, tiny_path)


def test_the_collator_gives_one_image_placeholder_per_slice_and_the_pixels_reach_the_processor(
    processor, tmp_path
):
    png = tmp_path / "xray.png"
    Image.new("RGB", (56, 56), (10, 20, 30)).save(png)
    nifti = write_nifti(tmp_path / "volume.nii.gz", np.repeat(np.repeat(volume_pattern(), 14, 0), 14, 1))
    series = write_series(tmp_path / "series", [0, 100, 200, 300, 400])
    records = [record("png", png), record("nifti", nifti), record("series", series)]
    recording = RecordingProcessor(processor)
    collate = PromptCollator(recording, "think", image={"window": [200, 400], "slices": 3}, max_pixels=401408)
    batch = collate(records)
    assert batch.images_per_prompt.tolist() == [1, 3, 3]
    vision_start = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert (batch.model_inputs["input_ids"] == vision_start).sum(1).tolist() == [1, 3, 3]
    assert len(batch.model_inputs["image_grid_thw"]) == 7
    # the images the processor received, in prompt order: the PNG, the NIfTI's and the series' slices
    expected = [
        image
        for r in records
        for image in load_images(r.images[0], r.id, ImageSettings(window=(200, 400), slices=3))
    ]
    assert [np.asarray(image).tolist() for image in recording.images] == [
        np.asarray(image).tolist() for image in expected
    ]
    assert levels(recording.images[4:]) == [0, 128, 255]  # the series' slices 0, 2, 4
    # the per-slice budget shrinks every slice; the processor then gives each its own (fewer) tokens
    small = PromptCollator(processor, "think", image={"slices": 3}, max_pixels=3 * 3136)(records[1:2])
    assert small.model_inputs["image_grid_thw"].tolist() == [[1, 4, 4]] * 3


def test_a_nifti_record_goes_through_the_tiny_model(processor, tiny_path, tmp_path):
    data = np.random.default_rng(1).normal(40, 300, size=(70, 60, 12)).astype(np.float32)
    nifti = write_nifti(tmp_path / "ct.nii.gz", data)
    batch = PromptCollator(processor, "think", image={"window": "abdomen", "slices": 2}, max_pixels=401408)(
        [record("volume", nifti)]
    )
    assert batch.images_per_prompt.tolist() == [2]
    model = load_model(compose_config([]).model, tiny_path).eval()
    with torch.no_grad():
        logits = model(**batch.model_inputs).logits
    assert logits.shape[:2] == batch.model_inputs["input_ids"].shape and torch.isfinite(logits).all()


def test_evaluations_under_other_windows_or_slices_are_not_reused():
    from medr1.evaluate import evaluation_key

    key = evaluation_key(compose_config(["mode=eval"]), "some/model")
    for override in ("image.window=lung", "image.window=[40,400]", "image.slices=3", "image.axis=1"):
        assert evaluation_key(compose_config(["mode=eval", override]), "some/model") != key, override
