"""Reading CT files: every supported format gives the same voxels and RAS geometry."""

import sys

import numpy as np
import pytest
import SimpleITK as sitk

from HOSciaticModuleLib.errors import InputError
from HOSciaticModuleLib.geometry import VolumeGeometry
from HOSciaticModuleLib.export import BackgroundVolumeWriter
from HOSciaticModuleLib.imageio import (DicomSlices, LoadedImage, read_markups_json, read_volume, regular_slice_grid,
                                        sitk_image_from_array, write_nrrd_fast, write_volume)
from HOSciaticModuleLib.phantom import write_dicom_slices, write_markups_points_json


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


def _as_slices(values, geometry):
    """The volume as a scanner writes it: the image, its direction (columns i, j, k in
    LPS) and each slice's position."""
    image = sitk_image_from_array(values, geometry)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return image, direction, [image.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(image.GetDepth())]


def _write_series(folder, image, direction, planes, positions, number, description, first_instance=1, **tags):
    """One series of ``planes`` at ``positions`` into ``folder`` (several may share it)."""
    write_dicom_slices(folder, planes, positions, direction[:, 0], direction[:, 1], image.GetSpacing()[:2],
                       series_number=number, series_description=description, tags=tags,
                       first_instance=first_instance)


def test_dicom_series_folder(tmp_path, volume):
    values, geometry = volume
    image, direction, positions = _as_slices(values, geometry)
    write_dicom_slices(tmp_path / "dicom", values, positions, direction[:, 0], direction[:, 1], image.GetSpacing()[:2])
    loaded = read_volume(tmp_path / "dicom")
    assert "DICOM series" in loaded.description
    assert loaded.warnings == []
    np.testing.assert_array_equal(loaded.array, values)
    np.testing.assert_allclose(loaded.geometry.ijk_to_ras, geometry.ijk_to_ras, atol=1e-3)


def test_dicom_folder_of_several_series_names_the_one_analysed(tmp_path, volume):
    values, geometry = volume
    image, direction, positions = _as_slices(values, geometry)
    folder = tmp_path / "study"
    write_dicom_slices(folder, values, positions, direction[:, 0], direction[:, 1], image.GetSpacing()[:2],
                       series_number=2, series_description="Pelvis 1.0 Br40")
    write_dicom_slices(folder, values[:2] + 7, positions[:2], direction[:, 0], direction[:, 1],
                       image.GetSpacing()[:2], series_number=3, series_description="Topogram")
    loaded = read_volume(folder)
    np.testing.assert_array_equal(loaded.array, values)
    assert len(loaded.warnings) == 1
    warning = loaded.warnings[0]
    assert "2 series" in warning and "'Pelvis 1.0 Br40' (6 files)" in warning and "'Topogram' (2 files)" in warning
    assert "as many slices" not in warning and "folder holding only that series" in warning

    # A second reconstruction with as many slices: the reader is asked to check which one was meant.
    write_dicom_slices(folder, values + 7, positions, direction[:, 0], direction[:, 1], image.GetSpacing()[:2],
                       series_number=4, series_description="Pelvis 1.0 Br64")
    warning = read_volume(folder).warnings[0]
    assert "3 series" in warning and "as many slices" in warning and "Br64" in warning and "Br40" in warning


def test_dicom_series_holding_its_scout_is_refused_with_what_to_do(tmp_path, volume):
    # A scout saved in the stack's own series (another matrix size, as some scanners and
    # anonymisers save it): the series reader's size mismatch was an "internal error".
    values, geometry = volume
    image, direction, positions = _as_slices(values, geometry)
    folder = tmp_path / "dicom"
    write_dicom_slices(folder, values, positions, direction[:, 0], direction[:, 1], image.GetSpacing()[:2])
    write_dicom_slices(tmp_path / "scout", values[:, :, 5][None].copy(), positions[-1:], (0.0, 1.0, 0.0),
                       (0.0, 0.0, -1.0), (0.9, 2.5))
    (next((tmp_path / "scout").iterdir())).rename(folder / "scout.dcm")
    with pytest.raises(InputError, match="cannot be read as one volume.*a scout.*Export the one axial stack"):
        read_volume(folder)


def test_dicom_export_with_a_folder_per_series_is_searched(tmp_path, volume):
    """A PACS or CD export keeps each series in a folder of its own, levels down
    (patient / study / series): given the export's top folder, the largest series is read."""
    values, geometry = volume
    image, direction, positions = _as_slices(values, geometry)
    export = tmp_path / "export"
    (export / "DICOMDIR").parent.mkdir(parents=True)
    (export / "DICOMDIR").write_bytes(b"not an image")
    write_dicom_slices(export / "PA000000" / "ST000000" / "SE000001", values[:2] + 7, positions[:2],
                       direction[:, 0], direction[:, 1], image.GetSpacing()[:2], series_number=3,
                       series_description="Topogram")
    write_dicom_slices(export / "PA000000" / "ST000000" / "SE000002", values, positions, direction[:, 0],
                       direction[:, 1], image.GetSpacing()[:2], series_number=2, series_description="Pelvis 1.0 Br40")
    loaded = read_volume(export)
    np.testing.assert_array_equal(loaded.array, values)
    np.testing.assert_allclose(loaded.geometry.ijk_to_ras, geometry.ijk_to_ras, atol=1e-3)
    assert "PA000000/ST000000/SE000002" in loaded.description
    (warning,) = loaded.warnings
    assert "'Pelvis 1.0 Br40' (6 files)" in warning and "'Topogram' (2 files)" in warning
    empty = tmp_path / "empty" / "sub"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="nor do its subfolders"):
        read_volume(tmp_path / "empty")


def ramp_hu(points_lps):
    """A CT whose value is a linear function of position: linear interpolation between
    slices reproduces it exactly, so any misplaced voxel shows."""
    return 2.0 * points_lps[..., 0] + 3.0 * points_lps[..., 1] + 4.0 * points_lps[..., 2] - 300.0


def scanner_slices(rows, columns, pixel_mm, positions_lps, row_lps, column_lps):
    j, i = np.mgrid[0:rows, 0:columns]
    planes = []
    for position in positions_lps:
        points = (np.asarray(position)[None, None, :] + i[..., None] * pixel_mm[0] * np.asarray(row_lps)
                  + j[..., None] * pixel_mm[1] * np.asarray(column_lps))
        planes.append(np.rint(ramp_hu(points)).astype(np.int16))
    return np.stack(planes)


def voxel_lps(loaded):
    return loaded.geometry.voxel_ras_grid() * [-1.0, -1.0, 1.0]


def test_dicom_gantry_tilt_is_undone(tmp_path):
    # A 20 degree gantry tilt: slices lean about L while the table moves along S.
    tilt = np.radians(20.0)
    row, column = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(tilt), np.sin(tilt)])
    positions = [(-10.0, -20.0, 5.0 + 2.0 * k) for k in range(12)]
    write_dicom_slices(tmp_path / "tilted", scanner_slices(40, 30, (0.8, 0.8), positions, row, column),
                       positions, row, column, (0.8, 0.8))
    loaded = read_volume(tmp_path / "tilted")
    assert len(loaded.warnings) == 1 and "gantry tilt of 20.0 degrees" in loaded.warnings[0]
    directions = loaded.geometry.directions
    np.testing.assert_allclose(directions.T @ directions, np.eye(3), atol=1e-6)  # a grid at right angles
    np.testing.assert_allclose(loaded.geometry.spacing_ijk, (0.8, 0.8, 2.0 * np.cos(tilt)), atol=1e-4)
    # Every voxel the tilted slices covered holds the CT value of its true position
    # (rounding of the written slices and of the result: 1 HU). Rows near the edge that
    # a shifted slice does not cover are left out.
    expected = ramp_hu(voxel_lps(loaded))
    shift_rows = int(np.ceil(2.0 * 11 * np.sin(tilt) / 0.8)) + 1
    inner = (slice(None), slice(shift_rows, 40 - shift_rows), slice(None))
    assert np.max(np.abs(loaded.array[inner] - expected[inner])) <= 1.0


def test_dicom_uneven_slices_are_interpolated(tmp_path):
    row, column = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    heights = [0.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0]  # the slice at 4 mm is missing
    positions = [(0.0, 0.0, z) for z in heights]
    write_dicom_slices(tmp_path / "uneven", scanner_slices(8, 9, (0.7, 0.7), positions, row, column),
                       positions, row, column, (0.7, 0.7))
    loaded = read_volume(tmp_path / "uneven")
    assert len(loaded.warnings) == 1 and "1.00 to 2.00 mm" in loaded.warnings[0]
    assert loaded.array.shape == (8, 8, 9)
    np.testing.assert_allclose(loaded.geometry.spacing_ijk, (0.7, 0.7, 1.0), atol=1e-6)
    assert np.max(np.abs(loaded.array - ramp_hu(voxel_lps(loaded)))) <= 1.0


@pytest.mark.parametrize("heights, message", [
    ([0.0, 1.0, 2.0, 9.0, 10.0], "gap of 7.0 mm"),
    ([0.0, 1.0, 1.0, 2.0, 3.0], "same position"),
])
def test_dicom_missing_or_duplicate_slices_are_refused(tmp_path, heights, message):
    row, column = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    positions = [(0.0, 0.0, z) for z in heights]
    folder = tmp_path / "broken"
    write_dicom_slices(folder, scanner_slices(6, 6, (1.0, 1.0), positions, row, column), positions, row, column,
                       (1.0, 1.0))
    with pytest.raises(InputError, match=message):
        read_volume(folder)


def test_markups_coordinates_lps_and_ras(tmp_path):
    points = np.array([[1.0, 2.0, 3.0], [-4.0, 5.0, -6.0]])
    path = tmp_path / "p.mrk.json"
    write_markups_points_json(path, points, "pts")  # written in LPS, as Slicer writes
    np.testing.assert_allclose(read_markups_json(path)[0].points_ras, points)
    text = path.read_text().replace('"LPS"', '"RAS"')
    path.write_text(text)
    np.testing.assert_allclose(read_markups_json(path)[0].points_ras, points * [-1, -1, 1])


@pytest.mark.parametrize("system", [0, 1])
def test_fcsv_written_by_slicer_reads_as_its_points(tmp_path, slicer_scene, system):
    """A point list Slicer's own storage node writes as .fcsv, in RAS (before 4.11) or
    LPS (since), gives the points Slicer placed; a point never placed is left out and
    counted, as in the JSON format."""
    import slicer

    points = np.array([[10.0, -20.0, 30.0], [12.5, -22.0, 60.5], [-3.0, 4.0, -5.0]])
    node = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "nerve right")
    for point in points:
        node.AddControlPoint(list(point))
    node.AddControlPoint([1.0, 2.0, 3.0])
    node.UnsetNthControlPointPosition(3)
    storage = slicer.vtkMRMLMarkupsFiducialStorageNode()
    slicer_scene.AddNode(storage)
    storage.SetCoordinateSystem(system)
    path = tmp_path / "seeds_right.fcsv"
    storage.SetFileName(str(path))
    assert storage.WriteData(node)
    (markup,) = read_markups_json(path)
    np.testing.assert_allclose(markup.points_ras, points)
    assert markup.unplaced == 1 and markup.kind == "Fiducial" and markup.name == "seeds_right"


def test_fcsv_of_slicer_4_and_files_without_a_coordinate_system(tmp_path):
    rows = "vtkMRMLMarkupsFiducialNode_0,-10,20,30,0,0,0,1,1,1,0,F-1,,\nvtkMRMLMarkupsFiducialNode_1,-12,22,60,0,0,0,1,1,1,0,F-2,,\n"
    columns = "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
    path = tmp_path / "p.fcsv"
    # Slicer 4.4-4.10 wrote the system as a number: 1 is LPS, 0 RAS.
    path.write_text("# Markups fiducial file version = 4.10\n# CoordinateSystem = 1\n" + columns + rows)
    np.testing.assert_allclose(read_markups_json(path)[0].points_ras, [[10, -20, 30], [12, -22, 60]])
    path.write_text("# Markups fiducial file version = 4.6\n# CoordinateSystem = 0\n" + columns + rows)
    np.testing.assert_allclose(read_markups_json(path)[0].points_ras, [[-10, 20, 30], [-12, 22, 60]])
    for header, phrase in (("# Markups fiducial file version = 4.11\n", "does not say its coordinate system"),
                           ("", "does not say its coordinate system"),
                           ("# Markups fiducial file version = 4.6\n# CoordinateSystem = 2\n", "voxel indices")):
        path.write_text(header + columns + rows)
        with pytest.raises(InputError, match=phrase):
            read_markups_json(path)
    path.write_text("# Markups fiducial file version = 5.8\n# CoordinateSystem = LPS\n" + columns + "1,a,2,3\n")
    with pytest.raises(InputError, match="malformed point line"):
        read_markups_json(path)
    table = tmp_path / "p.csv"
    table.write_text("x,y,z\n1,2,3\n")
    with pytest.raises(InputError, match="coordinate system is not known"):
        read_markups_json(table)


def test_slices_out_of_order_are_stacked_by_position():
    # Headers, not file order, say where a slice lies.
    planes = np.arange(5 * 4 * 3, dtype=np.int16).reshape(5, 4, 3)
    order = [2, 0, 4, 1, 3]
    image = sitk.GetImageFromArray(planes[order])
    image.SetSpacing((0.5, 0.5, 1.0))
    row, column = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    positions = np.array([(0.0, 0.0, 1.5 * k) for k in order])
    regular, warnings = regular_slice_grid(image, DicomSlices(row, column, positions))
    assert warnings == []
    np.testing.assert_array_equal(sitk.GetArrayFromImage(regular), planes)
    assert regular.GetSpacing()[2] == pytest.approx(1.5)


@pytest.mark.parametrize("dtype", ["int16", "<u2", ">i2", "uint8", "int32", "float32", "float64"])
def test_fast_nrrd_reads_back_as_written_through_itk(tmp_path, dtype):
    """The scene bundle's CT, written with ISA-L's compressor and its own header, reads
    back through ITK's NRRD reader (Slicer's) with the same voxels and geometry as ITK's
    own NRRD writer gives, on an oblique, mirrored grid and in either byte order."""
    from scipy.spatial.transform import Rotation

    directions = Rotation.from_euler("xyz", [20.0, -15.0, 30.0], degrees=True).as_matrix() @ np.diag([-1, 1, -1])
    geometry = VolumeGeometry.from_spacing_origin_directions((5, 7, 9), (0.7, 0.9, 2.5), (12.5, -40.25, 101.0),
                                                             directions)
    values = np.random.default_rng(5).normal(0.0, 300.0, geometry.shape_kji).astype(dtype)
    assert write_nrrd_fast(tmp_path / "fast.nrrd", values, geometry)
    write_volume(tmp_path / "itk.nrrd", values.astype(values.dtype.newbyteorder("=")), geometry)
    fast, itk = sitk.ReadImage(str(tmp_path / "fast.nrrd")), sitk.ReadImage(str(tmp_path / "itk.nrrd"))
    assert fast.GetPixelID() == itk.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(fast), values)
    np.testing.assert_allclose(fast.GetOrigin(), itk.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(fast.GetSpacing(), itk.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(fast.GetDirection(), itk.GetDirection(), atol=1e-9)
    header, data = (tmp_path / "fast.nrrd").read_bytes().split(b"\n\n", 1)
    assert b"encoding: gzip" in header and data[:2] == b"\x1f\x8b"  # a gzip stream, as the header says


def test_bundle_volume_is_written_by_itk_where_isal_is_missing(tmp_path, monkeypatch, volume):
    monkeypatch.setitem(sys.modules, "isal", None)
    values, geometry = volume
    assert not write_nrrd_fast(tmp_path / "unwritten.nrrd", values, geometry)
    assert not (tmp_path / "unwritten.nrrd").exists()
    writer = BackgroundVolumeWriter(LoadedImage(values, geometry, "test", "test"), tmp_path)
    written = read_volume(writer.result())
    np.testing.assert_array_equal(written.array, values)
    np.testing.assert_allclose(written.geometry.ijk_to_ras, geometry.ijk_to_ras, atol=1e-9)
    writer.discard()


def test_mr_study_folder_gives_its_t2_fat_saturated_series(tmp_path, volume):
    """A study exported whole: the diffusion series has the most files (its positions
    repeat once per b-value) and a T1 as many slices as the T2 fat-sat; an MR run takes the
    T2 fat-sat series and names the others, and the diffusion series' refusal."""
    values, geometry = volume
    image, direction, positions = _as_slices(values, geometry)
    folder = tmp_path / "study"

    def series(number, description, planes, at, **tags):
        _write_series(folder, image, direction, planes, at, number, description, **{"0008|0060": "MR", **tags})

    series(5, "ep2d_diff_b50_800", np.concatenate([values, values + 1]), positions + positions)
    series(3, "T1 TSE AX", values + 5, positions, **{"0018|0081": "12"})
    series(4, "T2 TSE FS AX", values + 9, positions, **{"0018|0081": "85", "0018|0022": "FS"})
    series(2, "localizer", values[:2], positions[:2])
    loaded = read_volume(folder, modality="mr")
    np.testing.assert_array_equal(loaded.array, values + 9)
    (warning,) = loaded.warnings
    assert "'T2 TSE FS AX' (6 files), a T2-weighted fat-suppressed series by its header, was analysed" in warning
    assert "'T1 TSE AX' (6 files)" in warning and "'localizer' (2 files)" in warning
    assert "'ep2d_diff_b50_800' (12 files)" in warning and "passed over" not in warning   # not even tried
    assert "as many slices" not in warning

    # Without a name saying so, the header's scan options and echo time tell the contrast.
    folder, named = tmp_path / "unnamed", folder
    series(3, "AX 1", values + 5, positions, **{"0018|0081": "12"})
    series(4, "AX 2", values + 9, positions, **{"0018|0081": "85", "0018|0022": "SAT_GEMS\\FS"})
    np.testing.assert_array_equal(read_volume(folder, modality="mr").array, values + 9)

    # A CT run, or a folder of diffusion only: the series with most slices, refused with its reason
    # and the others named.
    only_diffusion = tmp_path / "dwi"
    folder = only_diffusion
    series(5, "ep2d_diff_b50_800", np.concatenate([values, values + 1]), positions + positions)
    series(6, "ep2d_diff_b1000", np.concatenate([values, values + 1]), positions + positions)
    with pytest.raises(InputError, match=r"None of the 2 series tried .*'ep2d_diff_b50_800' \(12 files\): The DICOM "
                                         r"series has two or more slices at the same position"):
        read_volume(only_diffusion, modality="mr")
    assert np.array_equal(read_volume(named).array, values + 5)   # no modality: most slices that read, then UID


def test_dual_echo_mr_series_gives_its_t2_weighted_echo(tmp_path, volume):
    """A dual-echo series (proton density at TE 20 ms, T2 at 90 ms) saves both echoes under
    one UID, each position twice, and its name says both ("PD_T2"): an MR run reads each
    echo as a series of its own, takes the T2-weighted echo by its echo time and names
    the other; a series whose slices do not say their echo is refused as before."""
    values, geometry = volume
    image, direction, positions = _as_slices(values, geometry)
    folder = tmp_path / "dual"
    for echo, echo_time, offset in ((1, "20", 5), (2, "90", 9)):
        _write_series(folder, image, direction, values + offset, positions, 7, "PD_T2_TSE_AX",
                      first_instance=1 + (echo - 1) * len(values),
                      **{"0008|0060": "MR", "0018|0081": echo_time, "0018|0086": str(echo)})
    loaded = read_volume(folder, modality="mr")
    np.testing.assert_array_equal(loaded.array, values + 9)
    np.testing.assert_allclose(loaded.geometry.ijk_to_ras, geometry.ijk_to_ras, atol=1e-3)
    (warning,) = loaded.warnings
    assert "each echo of a multi-echo series counted apart" in warning
    assert "'PD_T2_TSE_AX' (echo 2 of 2, TE 90 ms; 6 files), the nearest to a T2-weighted" in warning
    assert "'PD_T2_TSE_AX' (echo 1 of 2, TE 20 ms; 6 files) left aside" in warning and "as many" not in warning

    unsaid = tmp_path / "unsaid"
    for echo, offset in ((1, 5), (2, 9)):
        _write_series(unsaid, image, direction, values + offset, positions, 8, "PD_T2_TSE_AX",
                      first_instance=1 + (echo - 1) * len(values), **{"0008|0060": "MR"})
    with pytest.raises(InputError, match="two or more slices at the same position"):
        read_volume(unsaid, modality="mr")


def _write_multiframe(path, values, geometry, **tags):
    """The volume as one multi-frame file: ITK writes an Enhanced MR (or CT) image, its
    frames placed by the functional groups, as newer scanners export a series."""
    image = sitk_image_from_array(values, geometry)
    for tag, value in tags.items():
        image.SetMetaData(tag, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def test_multi_frame_file_is_read_as_the_volume_it_holds(tmp_path, volume):
    """A series saved as one multi-frame (enhanced) file holds a whole volume: it is read
    as such (the series reader made a 4D image of one file, refused), counted by its
    frames among a folder's series, and the reader is told its frames were not checked
    one by one. For an MR run it is chosen by its contrast over a T1 series beside it."""
    values, geometry = volume
    image, direction, positions = _as_slices(values, geometry)
    mr = tmp_path / "mr"
    _write_multiframe(mr / "enhanced.dcm", values, geometry,
                      **{"0008|0060": "MR", "0008|103e": "t2_tse_fs_tra", "0018|0081": "80"})
    _write_series(mr, image, direction, values + 3, positions, 5, "t1_tse_tra", **{"0008|0060": "MR"})
    loaded = read_volume(mr, modality="mr")
    np.testing.assert_array_equal(loaded.array, values)
    np.testing.assert_allclose(loaded.geometry.ijk_to_ras, geometry.ijk_to_ras, atol=1e-3)
    choice, frames = loaded.warnings
    assert "'t2_tse_fs_tra' (one file of 6 frames), a T2-weighted fat-suppressed series by its header" in choice
    assert "one multi-frame (enhanced) file of 6 frames" in frames

    # Among CT series, by its frames: 6 of them outnumber a series of 4 files.
    ct = tmp_path / "ct"
    _write_multiframe(ct / "enhanced.dcm", values, geometry, **{"0008|0060": "CT", "0008|103e": "Pelvis 1.0"})
    _write_series(ct, image, direction, values[:4] + 7, positions[:4], 4, "Pelvis 5.0")
    loaded = read_volume(ct, modality="ct")
    np.testing.assert_array_equal(loaded.array, values)
    assert "'Pelvis 1.0' (one file of 6 frames), the one with the most slices" in loaded.warnings[0]
    assert "'Pelvis 5.0' (4 files) left aside" in loaded.warnings[0]

    # A series of one file that the reader cannot decode (damaged, or compressed in a way
    # not supported) is told as that file, not as slices of several sizes.
    from HOSciaticModuleLib.imageio import _read_series_volume

    damaged = tmp_path / "damaged" / "enhanced.dcm"
    damaged.parent.mkdir()
    damaged.write_bytes((mr / "enhanced.dcm").read_bytes()[:-5000])
    with pytest.raises(InputError, match=r"is one file \('enhanced.dcm'\) that cannot be read .*compression"):
        _read_series_volume([str(damaged)], damaged.parent)


def test_dicom_series_refused_gives_way_to_the_next(tmp_path, volume):
    """A series that cannot be read as one volume is passed over for the next, and named."""
    values, geometry = volume
    image, direction, positions = _as_slices(values, geometry)
    folder = tmp_path / "study"
    _write_series(folder, image, direction, np.concatenate([values, values]), positions + positions, 2, "Dual energy")
    _write_series(folder, image, direction, values, positions, 3, "Pelvis 1.0 Br40")
    loaded = read_volume(folder, modality="ct")
    np.testing.assert_array_equal(loaded.array, values)
    (warning,) = loaded.warnings
    assert ("'Dual energy' (12 files) was passed over: the DICOM series has two or more slices at the same "
            "position") in warning


@pytest.mark.parametrize("sform_code, used", [(1, "sform"), (2, "qform")])
def test_nifti_whose_qform_and_sform_disagree_is_named(tmp_path, volume, sform_code, used):
    """An sform moved 20 mm (a registration saved in it only): the reader takes the sform
    for scanner coordinates (code 1) and the qform otherwise; either way the file's two
    placements are named, with the one read."""
    import struct

    values, geometry = volume
    path = tmp_path / "mr.nii"
    write_volume(path, values, geometry, compress=False)
    assert read_volume(path).warnings == []
    header = bytearray(path.read_bytes())
    srow_x = list(struct.unpack("<4f", header[280:296]))
    srow_x[3] += 20.0
    header[280:296] = struct.pack("<4f", *srow_x)
    header[254:256] = struct.pack("<h", sform_code)
    path.write_bytes(bytes(header))
    loaded = read_volume(path, "MR image")
    (warning,) = loaded.warnings
    assert "qform and sform, up to 20.0 mm apart" in warning and f"read through its {used}" in warning
    shift = loaded.geometry.origin_ras - geometry.origin_ras
    np.testing.assert_allclose(shift, [20.0, 0, 0] if used == "sform" else [0, 0, 0], atol=1e-3)


def test_refused_ct_series_gives_no_way_to_its_scout_and_tra_ce_is_no_trace(tmp_path, volume):
    # A CT series that cannot be read beside its two-file topogram: the topogram was read
    # instead, as "the largest that is no localizer". And "tra CE" (axial, contrast) was
    # read as TRACE, a diffusion map, so a five-slice MPR was analysed instead.
    values, geometry = volume
    image, direction, positions = _as_slices(values, geometry)
    folder = tmp_path / "study"
    _write_series(folder, image, direction, np.concatenate([values, values]), positions + positions, 2,
                  "Pelvis 1.0 Br40")
    _write_series(folder, image, direction, values[:2], positions[:2], 3, "Topogram",
                  **{"0008|0008": "ORIGINAL\\PRIMARY\\LOCALIZER"})
    with pytest.raises(InputError, match=r"two or more slices at the same position.*'Pelvis 1.0 Br40' \(12 files\).*"
                                         r"'Topogram' \(2 files\) is no volume to analyse"):
        read_volume(folder, modality="ct")
    folder = tmp_path / "contrast"
    _write_series(folder, image, direction, values, positions, 2, "Pelvis 1.0 tra CE")
    _write_series(folder, image, direction, values[:3] + 5, positions[:3], 3, "Pelvis 5.0 MPR")
    np.testing.assert_array_equal(read_volume(folder, modality="ct").array, values)


def test_bundle_members_are_stored_as_zipfile_writes_them(tmp_path):
    """A file packed into the scene bundle in large chunks gives the same archive, byte
    for byte, as ``ZipFile.write``, for an empty, a small and a multi-chunk file."""
    import os
    import zipfile

    from HOSciaticModuleLib.export import ZIP_COPY_CHUNK_BYTES, _store_in_zip

    rng = np.random.default_rng(2)
    files = []
    for name, size in (("empty.tsv", 0), ("small.mrml", 1000), ("ct.nrrd", 2 * ZIP_COPY_CHUNK_BYTES + 12345)):
        path = tmp_path / name
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        os.utime(path, (1_700_000_000, 1_700_000_000))
        files.append(path)
    archives = []
    for store in (lambda bundle, path: bundle.write(path, f"scene/{path.name}"),
                  lambda bundle, path: _store_in_zip(bundle, path, f"scene/{path.name}")):
        archive = tmp_path / f"bundle{len(archives)}.mrb"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as bundle:
            for path in files:
                store(bundle, path)
        archives.append(archive.read_bytes())
    assert archives[0] == archives[1]
