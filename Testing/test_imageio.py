"""Reading CT files: every supported format gives the same voxels and RAS geometry."""

import numpy as np
import pytest
import SimpleITK as sitk

from HOSciaticModuleLib.geometry import VolumeGeometry
from HOSciaticModuleLib.imageio import read_markups_json, read_volume, sitk_image_from_array, write_volume
from HOSciaticModuleLib.phantom import write_markups_points_json


@pytest.fixture
def volume():
    rng = np.random.default_rng(3)
    values = rng.integers(-1000, 1500, size=(6, 9, 11)).astype(np.int16)
    directions = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # rotated in-plane
    geometry = VolumeGeometry.from_spacing_origin_directions(values.shape, (0.7, 0.9, 2.5), (10.0, -20.0, 30.0),
                                                             directions)
    return values, geometry


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_file_formats_round_trip(tmp_path, volume, suffix):
    values, geometry = volume
    path = tmp_path / f"ct{suffix}"
    write_volume(path, values, geometry)
    loaded = read_volume(path)
    np.testing.assert_array_equal(loaded.array, values)
    np.testing.assert_allclose(loaded.geometry.ijk_to_ras, geometry.ijk_to_ras, atol=1e-4)


def test_dicom_series_folder(tmp_path, volume):
    values, geometry = volume
    image = sitk_image_from_array(values, geometry)
    folder = tmp_path / "dicom"
    folder.mkdir()
    direction = image.GetDirection()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        origin = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT", "0020|000d": "1.2.3.4", "0020|000e": "1.2.3.4.5", "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in origin),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                        direction[1], direction[4], direction[7])),
            "0028|0030": f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}",
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
            "0028|1052": "0", "0028|1053": "1",
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_image)
    loaded = read_volume(folder)
    assert "DICOM series" in loaded.description
    np.testing.assert_array_equal(loaded.array, values)
    np.testing.assert_allclose(loaded.geometry.ijk_to_ras, geometry.ijk_to_ras, atol=1e-3)


def test_markups_coordinates_lps_and_ras(tmp_path):
    points = np.array([[1.0, 2.0, 3.0], [-4.0, 5.0, -6.0]])
    path = tmp_path / "p.mrk.json"
    write_markups_points_json(path, points, "pts")  # written in LPS, as Slicer writes
    np.testing.assert_allclose(read_markups_json(path)[0].points_ras, points)
    text = path.read_text().replace('"LPS"', '"RAS"')
    path.write_text(text)
    np.testing.assert_allclose(read_markups_json(path)[0].points_ras, points * [-1, -1, 1])
