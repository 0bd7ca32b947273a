"""What kind of image file a path is, and the cheap checks the readers make at read time.

A path is a picture (anything PIL reads), a DICOM file (`.dcm`/`.dicom`, or any file with the DICM
preamble), a NIfTI file (`.nii`, `.nii.gz`) or a folder holding one DICOM series. Reading them into
images is medr1.data.images; this module is apart so that medr1.data.records (ImageChecker) can use
it without importing the readers, which import records.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
NOT_IN_A_SERIES = ("DICOMDIR",)  # a folder's index file, not an image


def image_format(path: str | Path) -> str:
    """'dicom_series' (a folder), 'nifti', 'dicom' or 'picture' (left to PIL), by name and first bytes."""
    path = Path(path)
    if path.is_dir():
        return "dicom_series"
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if path.suffix.lower() in Image.registered_extensions():  # .png, .jpg, ...: no need to look inside
        return "picture"
    return "dicom" if has_dicom_preamble(path) else "picture"


def has_dicom_preamble(path: Path) -> bool:
    """Whether the file has DICOM's 128-byte preamble followed by 'DICM'."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly in `folder` (by suffix or preamble; hidden files and DICOMDIR left out)."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file()
        and not path.name.startswith(".")
        and path.name.upper() not in NOT_IN_A_SERIES
        and (path.name.lower().endswith(DICOM_SUFFIXES) or has_dicom_preamble(path))
    )


def folder_problem(folder: Path) -> str | None:
    """None if `folder` can be a DICOM series (it holds DICOM files), else what is wrong."""
    if not dicom_files(folder):
        return (
            f"image folder holds no DICOM files: {folder} (a folder is read as one DICOM series; "
            "point the record at the series folder or at an image file)"
        )
    return None


def header_problem(path: Path) -> str | None:
    """None if the DICOM or NIfTI header at `path` (a file, or the first file of a series folder)
    reads, else what is wrong; None for pictures, which the caller checks with PIL. No pixel data is read."""
    kind = image_format(path)
    if kind == "dicom_series":
        files = dicom_files(path)
        if not files:
            return folder_problem(path)
        path, kind = files[0], "dicom"
    try:
        if kind == "dicom":
            import pydicom

            if "Rows" not in pydicom.dcmread(path, force=True, stop_before_pixels=True):
                return f"unreadable DICOM file: {path} (no image in it: a report, a DICOMDIR or not DICOM at all)"
        elif kind == "nifti":
            import nibabel

            shape = nibabel.load(path).shape
            if len(shape) < 2:
                return f"unreadable NIfTI file: {path} (data shape {shape}, not an image)"
    except Exception as error:  # pydicom and nibabel raise many kinds on a truncated or foreign file
        return f"unreadable {'DICOM' if kind == 'dicom' else 'NIfTI'} file: {path} ({type(error).__name__}: {error})"
    return None
