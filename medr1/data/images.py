"""Image files -> RGB PIL images for the processor: pictures as they are, DICOM and NIfTI windowed to 8 bits.

- PNG, JPEG and every other format PIL reads: one image, converted to RGB (unchanged from before).
- DICOM: a file (`.dcm`/`.dicom`, or any file with the DICM preamble) or a folder holding one series.
  Stored values x RescaleSlope + RescaleIntercept (e.g. HU), then a window: `image.window` (a preset
  or [center, width]), else the file's WindowCenter/WindowWidth (first of several), else the slice's
  min..max. MONOCHROME1 is inverted; colour (RGB, and YBR, which pydicom decodes to RGB) passes
  through. A series is ordered by ImagePositionPatient along the slice normal, else InstanceNumber,
  else file name; a multi-frame file is a volume in frame order. Rows and columns are shown as stored.
- NIfTI (`.nii`, `.nii.gz`): the scaled data (scl_slope/scl_inter applied), reoriented to the closest
  RAS+ grid, so axis 0 is sagittal, 1 coronal and 2 axial whatever order the file stores; a 4-D (or
  higher) file gives its first volume; a 2-D one (or one slice thick) is one image. Window as for
  DICOM, in the stored units; without one, the volume's min..max.
- A volume gives `image.slices` slices: the centres of that many equal parts of its depth (1: the
  middle slice), at most one per slice it has, each an image of the same prompt.

Orientation: slices are shown as radiologists read them. A NIfTI slice (two RAS axes, in order) is
transposed and flipped both ways: axial and coronal with the patient's right on the viewer's left,
anterior (axial) or superior (coronal) up; sagittal with anterior on the left, superior up. A
standard axial DICOM (rows running right to left, columns anterior to posterior) shows the same way.

Windowing is linear: center - width/2 maps to 0, center + width/2 to 255, clipped, rounded half up
(the lower and upper grey levels as radiology texts define them). Presets and sources: docs/images.md.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medr1.data.image_files import dicom_files, image_format
from medr1.data.records import BadRecordError

# name -> (center, width) in HU; values and their sources in docs/images.md
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "soft_tissue": (40.0, 400.0),
}


@dataclass(frozen=True)
class ImageSettings:
    """The `image` config block: how DICOM and NIfTI files become images (pictures ignore it)."""

    window: str | tuple[float, float] | None = None  # None: the file's own, else min..max; a preset; (c, w)
    axis: int = 2  # NIfTI: the RAS axis slices are cut along (0 sagittal, 1 coronal, 2 axial)
    slices: int = 1  # volumes: how many evenly spaced slices become images (1: the middle one)

    def __post_init__(self):
        window = self.window
        if isinstance(window, Sequence) and not isinstance(window, str):
            window = tuple(window)
            two_numbers = len(window) == 2 and all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in window
            )
            if not two_numbers or window[1] <= 0:
                raise ValueError(self._window_error())
            object.__setattr__(self, "window", (float(window[0]), float(window[1])))
        elif window is not None and (not isinstance(window, str) or window not in WINDOW_PRESETS):
            raise ValueError(self._window_error())
        if isinstance(self.axis, bool) or not isinstance(self.axis, int) or self.axis < 0:
            raise ValueError(
                f"image.axis={self.axis!r} must be a non-negative int, the NIfTI axis (after reorientation to "
                "RAS) that slices are cut along: 0 sagittal, 1 coronal or 2 axial"
            )
        if isinstance(self.slices, bool) or not isinstance(self.slices, int) or self.slices < 1:
            raise ValueError(
                f"image.slices={self.slices!r} must be an int >= 1: how many evenly spaced slices of a volume "
                "become images of the prompt (1 = the middle slice)"
            )

    def _window_error(self) -> str:
        return (
            f"image.window={self.window!r} must be null (the file's own window, else each slice's min-max), "
            f"a preset ({' | '.join(WINDOW_PRESETS)}) or [center, width] with width > 0"
        )

    @classmethod
    def from_config(cls, image: ImageSettings | Mapping | None) -> ImageSettings:
        """From the `image` config block (None: the defaults); an ImageSettings is returned as is."""
        if image is None:
            return cls()
        if isinstance(image, ImageSettings):
            return image
        if not isinstance(image, Mapping):
            raise ValueError(f"image={image!r} must be a mapping with the keys window, axis, slices")
        unknown = set(image) - {"window", "axis", "slices"}
        if unknown:
            raise ValueError(f"image has unknown keys {sorted(unknown)}; the keys are window, axis, slices")
        return cls(**{key: image[key] for key in ("window", "axis", "slices") if key in image})

    @property
    def center_width(self) -> tuple[float, float] | None:
        """The window as (center, width), or None to use the file's own (else min..max)."""
        return WINDOW_PRESETS[self.window] if isinstance(self.window, str) else self.window


# --- the entry point ------------------------------------------------------------------------------


def load_images(
    path: str | Path,
    record_id: str,
    settings: ImageSettings | Mapping | None = None,
    resize: int | None = None,
    max_pixels: int | None = None,
) -> list[Image.Image]:
    """The RGB images `path` gives: one for a picture or a 2-D file, `settings.slices` (at most the
    depth) for a volume. `resize`: each image becomes resize x resize (bicubic). `max_pixels`: when
    the file gives k > 1 images, each is then shrunk (aspect kept) to at most max_pixels / k pixels, so
    its images together fit the budget one image has. Any problem raises BadRecordError naming `path`
    and `record_id`."""
    settings = ImageSettings.from_config(settings)
    kind = image_format(path)
    if kind == "picture":
        images = [read_picture(path, record_id)]
    else:
        reader = {"dicom": read_dicom_file, "dicom_series": read_dicom_series, "nifti": read_nifti}[kind]
        slices = reader(Path(path), record_id, settings)  # 8-bit [rows, columns] or [rows, columns, 3]
        images = [Image.fromarray(pixels).convert("RGB") for pixels in slices]
    if resize is not None:
        images = [image.resize((resize, resize), Image.Resampling.BICUBIC) for image in images]
    if max_pixels is not None and len(images) > 1:
        images = [within_pixels(image, max_pixels // len(images)) for image in images]
    return images


def within_pixels(image: Image.Image, budget: int) -> Image.Image:
    """`image` shrunk (aspect kept, bicubic) to at most `budget` pixels; as it is if already within."""
    width, height = image.size
    if width * height <= budget:
        return image
    scale = math.sqrt(budget / (width * height))
    size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def spread_indices(depth: int, count: int) -> list[int]:
    """`count` slice indices spread over `depth`: the centres of `count` equal parts (count=1: the
    middle slice), at most `depth` of them, in increasing order."""
    count = min(count, depth)
    return [(2 * part + 1) * depth // (2 * count) for part in range(count)]


def to_8bit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`values` mapped linearly from [low, high] to 0..255 (clipped, rounded half up); NaN is black,
    and so is everything when high <= low (a constant slice under min..max)."""
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = np.clip((np.asarray(values, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    return np.floor(np.nan_to_num(scaled, nan=0.0) * 255 + 0.5).astype(np.uint8)


def window_range(window: tuple[float, float] | None, values: np.ndarray) -> tuple[float, float]:
    """(low, high) grey levels: center -/+ width/2 of `window`, else the finite min..max of `values`."""
    if window is not None:
        center, width = window
        return center - width / 2, center + width / 2
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


# --- pictures -------------------------------------------------------------------------------------


def read_picture(path: str | Path, record_id: str) -> Image.Image:
    """A PNG/JPEG/... file as RGB, as PIL reads it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadRecordError(path, record_id, f"image cannot be read ({error})") from error


# --- DICOM ----------------------------------------------------------------------------------------
# pydicom and nibabel are imported where they are used: together about a second of import time that
# runs on pictures alone need not pay.


def read_dicom_file(path: Path, record_id: str, settings: ImageSettings) -> list[np.ndarray]:
    """8-bit slices of one DICOM file: one image, or the chosen frames of a multi-frame file."""
    dataset = read_dicom(path, record_id, pixels=True)
    pixels = dicom_pixels(dataset, path, record_id)
    frames = int(dataset.get("NumberOfFrames") or 1)
    if frames == 1:
        pixels = pixels[None]  # [1, rows, columns(, 3)]
    return [
        dicom_frame_to_8bit(dataset, pixels[index], index, settings)
        for index in spread_indices(len(pixels), settings.slices)
    ]


def read_dicom_series(folder: Path, record_id: str, settings: ImageSettings) -> list[np.ndarray]:
    """8-bit slices of the one DICOM series in `folder`, in slice order (headers are read for all
    files, pixels only for the chosen slices)."""
    files = dicom_files(folder)
    if not files:
        raise BadRecordError(
            folder,
            record_id,
            "the folder holds no DICOM files (.dcm, or files starting with the DICM preamble); point the "
            "record at a folder holding one DICOM series, or at a DICOM, NIfTI or picture file",
        )
    if len(files) == 1:
        return read_dicom_file(files[0], record_id, settings)
    headers = [read_dicom(file, record_id, pixels=False) for file in files]
    check_one_series(folder, record_id, files, headers)
    order = series_order(files, headers)
    chosen = [order[index] for index in spread_indices(len(order), settings.slices)]
    slices = []
    for file in chosen:
        dataset = read_dicom(file, record_id, pixels=True)
        slices.append(dicom_frame_to_8bit(dataset, dicom_pixels(dataset, file, record_id), 0, settings))
    return slices


def check_one_series(folder: Path, record_id: str, files: list[Path], headers: list) -> None:
    """One series of single-frame slices of one size, else BadRecordError."""
    series = sorted({str(header.get("SeriesInstanceUID", "")) for header in headers})
    if len(series) > 1:
        raise BadRecordError(
            folder,
            record_id,
            f"the folder mixes {len(series)} DICOM series (SeriesInstanceUID {', '.join(series[:3])}); "
            "put each series in its own folder",
        )
    for file, header in zip(files, headers, strict=True):
        if int(header.get("NumberOfFrames") or 1) > 1:
            raise BadRecordError(
                folder,
                record_id,
                f"{file.name} is a multi-frame file among {len(files)} files; point the record at that file",
            )
    sizes = sorted({(int(header.get("Rows") or 0), int(header.get("Columns") or 0)) for header in headers})
    if len(sizes) > 1:
        raise BadRecordError(
            folder,
            record_id,
            f"the series' slices differ in size ({sizes}, rows x columns); the folder must hold one series",
        )


def series_order(files: list[Path], headers: list) -> list[Path]:
    """Files in slice order: position along the slice normal (ImagePositionPatient on the normal of
    the first file's ImageOrientationPatient), else InstanceNumber, else file name."""
    normal = slice_normal(headers[0])
    positions = [
        float(np.dot([float(v) for v in header.ImagePositionPatient], normal))
        if normal is not None and len(header.get("ImagePositionPatient") or ()) == 3
        else None
        for header in headers
    ]
    if None not in positions:
        keys = positions
    elif all(header.get("InstanceNumber") is not None for header in headers):
        keys = [int(header.InstanceNumber) for header in headers]
    else:
        keys = [0] * len(files)
    return [file for _, file in sorted(zip(keys, files, strict=True))]


def slice_normal(header) -> np.ndarray | None:
    """The unit normal of the slice plane (row x column direction cosines), or None without them."""
    orientation = header.get("ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        return None
    normal = np.cross([float(v) for v in orientation[:3]], [float(v) for v in orientation[3:]])
    length = np.linalg.norm(normal)
    return normal / length if length > 0 else None


def read_dicom(path: Path, record_id: str, *, pixels: bool):
    """The dataset in `path` (without its pixel data unless `pixels`)."""
    import pydicom

    try:
        return pydicom.dcmread(path, force=True, stop_before_pixels=not pixels)
    except Exception as error:  # a corrupt file can fail anywhere in pydicom's parser
        raise BadRecordError(
            path,
            record_id,
            f"DICOM file cannot be read ({type(error).__name__}: {error}); replace the file with a complete copy",
        ) from error


def dicom_pixels(dataset, path: Path, record_id: str) -> np.ndarray:
    """The stored pixel array ([frames,] rows, columns[, 3])."""
    if "PixelData" not in dataset or "Rows" not in dataset:
        raise BadRecordError(
            path,
            record_id,
            "the DICOM file holds no image (no pixel data: a report, a DICOMDIR or not DICOM at all); "
            "point the record at an image file or a series folder",
        )
    try:
        return dataset.pixel_array
    except Exception as error:  # decoders raise many kinds (truncated data, missing codec, bad header)
        raise BadRecordError(
            path,
            record_id,
            f"DICOM pixel data cannot be decoded ({type(error).__name__}: {error}); the file may be truncated, "
            "or its compression may need a decoder (pip install pylibjpeg pylibjpeg-libjpeg)",
        ) from error


def dicom_frame_to_8bit(dataset, pixels: np.ndarray, frame: int, settings: ImageSettings) -> np.ndarray:
    """One frame as 8 bits: grey levels rescaled and windowed ([rows, columns]), colour as RGB."""
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, dataset)
    if pixels.ndim == 3:  # colour: as stored when 8-bit, else scaled by its own range
        return pixels if pixels.dtype == np.uint8 else to_8bit(pixels, *window_range(None, pixels))
    slope = dicom_number(dataset, "PixelValueTransformationSequence", "RescaleSlope", frame, 1.0)
    intercept = dicom_number(dataset, "PixelValueTransformationSequence", "RescaleIntercept", frame, 0.0)
    values = pixels.astype(np.float64) * slope + intercept
    window = settings.center_width
    if window is None:
        center = dicom_number(dataset, "FrameVOILUTSequence", "WindowCenter", frame, None)
        width = dicom_number(dataset, "FrameVOILUTSequence", "WindowWidth", frame, None)
        window = (center, width) if center is not None and width is not None and width > 0 else None
    grey = to_8bit(values, *window_range(window, values))
    return 255 - grey if photometric == "MONOCHROME1" else grey


def dicom_number(dataset, group: str, keyword: str, frame: int, default: float | None) -> float | None:
    """A numeric attribute (the first value if several): at the top level, else in the shared or the
    frame's functional group `group` (enhanced multi-frame files), else `default`."""
    places = [dataset]
    shared_then_own = (("SharedFunctionalGroupsSequence", 0), ("PerFrameFunctionalGroupsSequence", frame))
    for sequence, index in shared_then_own:
        groups = dataset.get(sequence)
        if groups is not None and index < len(groups) and groups[index].get(group):
            places.append(groups[index].get(group)[0])
    for place in places:
        value = place.get(keyword)
        if value is None or value == "":
            continue
        if not isinstance(value, (str, bytes)) and isinstance(value, Sequence):
            if not len(value):
                continue
            value = value[0]
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return default


# --- NIfTI ----------------------------------------------------------------------------------------


def read_nifti(path: Path, record_id: str, settings: ImageSettings) -> list[np.ndarray]:
    """8-bit slices of a NIfTI file's first volume, cut along `settings.axis` of its RAS grid."""
    import nibabel

    try:
        image = nibabel.load(path)
        extra = len(image.shape) - 3  # 4-D (time, ...) and up: the first volume
        data = image.dataobj[(slice(None),) * 3 + (0,) * extra] if extra > 0 else image.dataobj
        values = np.asarray(data, dtype=np.float32)  # the scaled values (scl_slope, scl_inter)
    except Exception as error:  # nibabel raises many kinds on a truncated or foreign file
        raise BadRecordError(
            path,
            record_id,
            f"NIfTI file cannot be read ({type(error).__name__}: {error}); replace it with a complete .nii/.nii.gz",
        ) from error
    if values.ndim not in (2, 3):
        raise BadRecordError(
            path,
            record_id,
            f"NIfTI data has shape {values.shape}; point the record at a 2-D image or a volume",
        )
    flat = values.ndim == 2 or values.shape[2] == 1  # one slice thick: a 2-D image
    if values.ndim == 2:
        values = values[..., None]
    transform = to_ras(image.affine)
    values = nibabel.orientations.apply_orientation(values, transform)
    axis = int(transform[2, 0]) if flat else settings.axis
    if axis >= values.ndim:
        raise BadRecordError(
            path,
            record_id,
            f"image.axis={axis} is out of range for a volume of shape {values.shape}; "
            "set image.axis to 0 (sagittal), 1 (coronal) or 2 (axial)",
        )
    low, high = window_range(settings.center_width, values)
    return [
        to_8bit(np.take(values, index, axis=axis).T[::-1, ::-1], low, high)
        for index in spread_indices(values.shape[axis], 1 if flat else settings.slices)
    ]


def to_ras(affine: np.ndarray) -> np.ndarray:
    """The nibabel orientation transform from the file's voxel axes to the closest RAS+ axes; an axis
    the affine gives no direction (e.g. a zero third column in some 2-D files) takes the RAS axis left."""
    from nibabel import orientations

    current = orientations.io_orientation(affine)
    unknown = np.isnan(current[:, 0])
    if unknown.any():
        free = [axis for axis in range(3) if axis not in set(current[~unknown, 0].astype(int))]
        for row, axis in zip(np.flatnonzero(unknown), free, strict=True):
            current[row] = (axis, 1)
    return orientations.ornt_transform(current, orientations.axcodes2ornt("RAS"))
