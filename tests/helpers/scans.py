"""Small DICOM files and series and NIfTI volumes written with pydicom and nibabel (independent tools),
for the image-reader and predict tests."""

from __future__ import annotations

import random
from pathlib import Path

import nibabel
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_dicom(path: Path, stored: np.ndarray, *, photometric: str = "MONOCHROME2", **attributes) -> Path:
    """A CT DICOM file with pixel data `stored` ([rows, columns] or [frames, rows, columns]) and
    the given attributes (RescaleSlope, WindowCenter, ImagePositionPatient, ...)."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = CTImageStorage
    dataset.Modality = "CT"
    dataset.set_pixel_data(stored, photometric, 16 if stored.dtype.itemsize == 2 else 8)
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, values: list[int], *, positions: bool = True, series_uid: str | None = None):
    """One single-frame file per slice: slice k is constant `values[k]` (HU), 2.5 mm apart along z.
    Files are written in shuffled order under names unrelated to it, with InstanceNumber reversed, so
    only ImagePositionPatient tells the order (or InstanceNumber when `positions` is False)."""
    series_uid = series_uid or generate_uid()
    order = list(range(len(values)))
    random.Random(3).shuffle(order)
    for name, k in enumerate(order):
        attributes = dict(
            SeriesInstanceUID=series_uid,
            InstanceNumber=len(values) - k if positions else k + 1,
            RescaleSlope=1,
            RescaleIntercept=-1024,
        )
        if positions:
            attributes |= dict(
                ImageOrientationPatient=[1, 0, 0, 0, 1, 0], ImagePositionPatient=[0, 0, 2.5 * k]
            )
        stored = np.full((8, 8), values[k] + 1024, dtype=np.uint16)
        write_dicom(folder / f"IM{name:04d}", stored, **attributes)  # no suffix: found by the DICM preamble
    return folder


def volume_pattern(shape=(4, 5, 6)) -> np.ndarray:
    """x + 4y + 20z: a different integer (0..255) at every voxel of a 4 x 5 x 6 volume."""
    x, y, z = np.indices(shape)
    return (x + 4 * y + 20 * z).astype(np.int16)


def write_nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path
