"""Reading and writing images and markups files for the command line.

Files on disk are LPS (ITK convention); the scene and every algorithm are RAS.
This is the only module that converts between the two for images.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .geometry import VolumeGeometry

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


@dataclass
class LoadedImage:
    array: np.ndarray            # (k, j, i)
    geometry: VolumeGeometry
    source: str
    description: str
    #: The image as read, when the array shares its memory (``share_memory``).
    sitk_image: object = None


def _sitk():
    import SimpleITK as sitk

    return sitk


def geometry_from_sitk(image) -> VolumeGeometry:
    direction_lps = np.asarray(image.GetDirection(), float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), float)
    origin_lps = np.asarray(image.GetOrigin(), float)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction_lps @ np.diag(spacing)
    matrix[:3, 3] = LPS_TO_RAS @ origin_lps
    size = image.GetSize()
    return VolumeGeometry(matrix, (size[2], size[1], size[0]))


def sitk_image_from_array(array: np.ndarray, geometry: VolumeGeometry):
    sitk = _sitk()
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in geometry.spacing_ijk))
    image.SetOrigin(tuple(float(v) for v in LPS_TO_RAS @ geometry.origin_ras))
    image.SetDirection(tuple(float(v) for v in (LPS_TO_RAS @ geometry.directions).ravel()))
    return image


def _read_dicom_series(folder: Path):
    sitk = _sitk()
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or []
    if not series_ids:
        raise InputError(f"The folder '{folder}' holds no DICOM series. Give a folder of DICOM slices or an image file "
                         f"({', '.join(IMAGE_SUFFIXES)}).")
    # The series with the most slices is the volume a user means; scouts and dose reports are small.
    best = max(series_ids, key=lambda sid: len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), best))
    return reader.Execute(), f"DICOM series {best} ({len(series_ids)} series in folder)"


def read_volume(path, what: str = "image", share_memory: bool = False) -> LoadedImage:
    """Read a 3D scalar image (NRRD, NIfTI, MHA or a DICOM folder) as RAS geometry + array.

    With ``share_memory`` the array is a read-only view of the image as read (no copy
    of a full CT); the image is then kept in ``sitk_image`` for as long as the array lives.

    Raises :class:`InputError` with a user-readable message for anything that is not
    a readable 3D scalar volume with sane geometry and finite values.
    """
    sitk = _sitk()
    path = Path(path)
    if not path.exists():
        raise InputError(f"The {what} '{path}' does not exist. Check the path.")
    if path.is_dir():
        image, description = _read_dicom_series(path)
    else:
        if not os.access(path, os.R_OK):
            raise InputError(f"The {what} '{path}' cannot be read (permission denied).")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            first_line = str(error).strip().splitlines()[-1] if str(error).strip() else ""
            raise InputError(f"The {what} '{path}' is not an image SimpleITK can read ({first_line.strip()}). "
                             f"Give a NRRD, NIfTI, MHA file or a DICOM folder.") from None
        description = path.name
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"The {what} '{path}' has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(colour or vector image); a scalar CT or MR volume is required.")
    if image.GetDimension() == 4 or (image.GetDimension() > 3):
        raise InputError(f"The {what} '{path}' is {image.GetDimension()}D (a time series or multi-volume); "
                         "extract the one 3D volume to analyse first.")
    if image.GetDimension() == 2 or min(image.GetSize()) < 2:
        raise InputError(f"The {what} '{path}' is a 2D image (size {image.GetSize()}); a 3D volume is required.")
    geometry = geometry_from_sitk(image)
    geometry.validate(f"The {what} '{path}'")
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            raise InputError(f"The {what} '{path}' holds {bad} NaN or infinite voxel values. "
                             "Fix or mask them (for example replace them by air, -1000 HU) and try again.")
    if share_memory:
        return LoadedImage(array, geometry, str(path), description, image)
    return LoadedImage(np.array(array), geometry, str(path), description)


def write_volume(path, array: np.ndarray, geometry: VolumeGeometry, compress: bool = True) -> None:
    sitk = _sitk()
    sitk.WriteImage(sitk_image_from_array(array, geometry), str(path), compress)


# ---------------------------------------------------------------------------------------
# Markups JSON
# ---------------------------------------------------------------------------------------
@dataclass
class MarkupsPoints:
    name: str
    points_ras: np.ndarray       # (N, 3)
    source: str
    kind: str                    # markups type as written in the file
    roi: dict | None = None      # for ROI markups: center_ras, size_mm, axes (3x3 columns)


def read_markups_json(path, what: str = "markups file") -> list[MarkupsPoints]:
    """Read every markup in a Slicer ``.mrk.json`` file; coordinates returned in RAS."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The {what} '{path}' does not exist. Check the path.")
    try:
        document = json.loads(path.read_text())
        markups = document["markups"]
        if not isinstance(markups, list) or not markups:
            raise KeyError("markups")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise InputError(f"The {what} '{path}' is not a Slicer markups JSON file (no 'markups' list). "
                         "Save the points from Slicer as .mrk.json.") from None
    result = []
    for markup in markups:
        try:
            system = str(markup.get("coordinateSystem", "LPS")).upper()
            flip = LPS_TO_RAS if system == "LPS" else np.eye(3)
            if system not in ("LPS", "RAS"):
                raise ValueError(f"unknown coordinate system {system}")
            positions = [cp["position"] for cp in markup.get("controlPoints", [])
                         if cp.get("positionStatus", "defined") == "defined"]
            points = np.asarray(positions, float).reshape(-1, 3) @ flip.T
            if not np.all(np.isfinite(points)):
                raise ValueError("non-finite coordinates")
            roi = None
            if markup.get("type") == "ROI":
                center = np.asarray(markup["center"], float) @ flip.T
                size = np.asarray(markup["size"], float)
                orientation = np.asarray(markup.get("orientation", np.eye(3).ravel()), float).reshape(3, 3)
                roi = {"center_ras": center, "size_mm": size, "axes": flip @ orientation}
            result.append(MarkupsPoints(str(markup.get("name", path.stem)), points, str(path),
                                        str(markup.get("type", "")), roi))
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"The {what} '{path}' has a malformed markup ({error}). "
                             "Re-save it from Slicer's Markups module.") from None
    return result
