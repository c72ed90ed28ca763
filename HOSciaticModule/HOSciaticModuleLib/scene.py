"""The thin layer between MRML nodes and the arrays the algorithms work on.

Reading: volumes, segments and markups become numpy arrays + :class:`VolumeGeometry`
(world RAS, parent linear transforms included). Writing: arrays and results become
nodes a Slicer user knows -- segments, tables, markups curves with per-point
measurements, plot charts and models. Every writer updates the node it is given
(so a re-run replaces its outputs) and creates one only when none was given.
Nothing here depends on Qt; the scene is always passed explicitly.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import InputError
from .geometry import VolumeGeometry, block_within, bounding_slices

#: Colour of HO segments: Slicer's "bone" terminology colour.
BONE_COLOR = (0.945, 0.839, 0.569)
NERVE_COLOR = (0.91, 0.85, 0.15)
#: Segments the reader should look at (bone wrapping the nerve outside the HO segments).
REVIEW_COLOR = (0.95, 0.45, 0.1)
#: HO segments the HO step named as possibly not HO: the bone colour without its hue, so
#: they stand apart from the others in the views and the segment list.
DOUBTED_COLOR = (0.75, 0.75, 0.75)


def _slicer():
    import slicer

    return slicer


def _numpy_support():
    from vtkmodules.util import numpy_support

    return numpy_support


def _matrix_to_numpy(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(array: np.ndarray):
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    matrix = vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _node_to_world(node, what: str) -> np.ndarray:
    """4x4 matrix from the node's coordinates to world RAS (identity without a transform)."""
    transform = node.GetParentTransformNode()
    if transform is None:
        return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        raise InputError(f"{what} '{node.GetName()}' is under a non-linear transform. Harden the transform "
                         "(Data module, right-click > Harden transform) and run again.")
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    matrix = vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(matrix)
    return _matrix_to_numpy(matrix)


def world_to_node(node, what: str) -> np.ndarray:
    """4x4 matrix from world RAS to the node's own coordinates, where its data are
    stored: results computed in world RAS go through it (identity without a transform)."""
    return np.linalg.inv(_node_to_world(node, what))


# ---------------------------------------------------------------------------------------
# Volumes
# ---------------------------------------------------------------------------------------
def volume_geometry(volume_node, what: str = "Volume") -> VolumeGeometry:
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    if volume_node is None or volume_node.GetImageData() is None:
        raise InputError(f"{what} has no image data. Select a loaded volume.")
    matrix = vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    dims = volume_node.GetImageData().GetDimensions()
    geometry = VolumeGeometry(_node_to_world(volume_node, what) @ _matrix_to_numpy(matrix), (dims[2], dims[1], dims[0]))
    geometry.validate(f"{what} '{volume_node.GetName()}'")
    return geometry


def array_from_volume(volume_node, what: str = "Volume") -> tuple[np.ndarray, VolumeGeometry]:
    """Voxel values (k, j, i) as a read-only view, and the world geometry."""
    geometry = volume_geometry(volume_node, what)
    image = volume_node.GetImageData()
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"{what} '{volume_node.GetName()}' has {image.GetNumberOfScalarComponents()} components; "
                         "a scalar CT or MR volume is required.")
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        raise InputError(f"{what} '{volume_node.GetName()}' has an image without voxel values. Select a loaded "
                         "volume, or load the image again.")
    array = _numpy_support().vtk_to_numpy(scalars).reshape(geometry.shape_kji)
    array.flags.writeable = False
    if array.dtype.kind == "f":
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise InputError(f"{what} '{volume_node.GetName()}' holds {bad} NaN or infinite voxel values (left by a "
                             "resampling or a conversion outside the image, for example). Set them to a value outside "
                             "the body (-1000 on a CT, 0 on an MR), or resample it again with a default value.")
    return array, geometry


def volume_node_from_array(scene, array: np.ndarray, geometry: VolumeGeometry, name: str, node=None,
                           node_class: str = "vtkMRMLScalarVolumeNode", copy: bool = True, memory_owner=None):
    """Create (or update) a volume node holding ``array`` on ``geometry``.

    With ``copy=False`` the node shares the array's memory (which must then stay
    unchanged): a full CT is not duplicated. ``memory_owner`` is an object that owns
    that memory without the array referring to it (a SimpleITK image viewed as an
    array); it is kept alive with the node's voxels.
    """
    from vtkmodules.vtkCommonDataModel import vtkImageData

    image = vtkImageData()
    image.SetDimensions(geometry.shape_kji[2], geometry.shape_kji[1], geometry.shape_kji[0])
    contiguous = np.ascontiguousarray(array)
    vtk_array = _numpy_support().numpy_to_vtk(contiguous.ravel(), deep=copy)
    if memory_owner is not None and not copy:
        # Kept the way numpy_to_vtk keeps its array: as an attribute of the VTK array.
        vtk_array._hosciatic_memory_owner = memory_owner
    image.GetPointData().SetScalars(vtk_array)
    if node is None:
        node = scene.AddNewNodeByClass(node_class, name)
    if node.GetDisplayNode() is None and node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode"):
        _add_grey_display(scene, node, contiguous)
    node.SetIJKToRASMatrix(_numpy_to_matrix(geometry.ijk_to_ras))
    node.SetAndObserveImageData(image)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def _add_grey_display(scene, node, values: np.ndarray) -> None:
    """Grey display with a window from the 1st-99th percentile of a voxel sample; the
    automatic window/level would read every voxel of a full CT."""
    display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
    display.SetAutoWindowLevel(False)
    sample = values.ravel()[:: max(1, values.size // 200_000)]
    low, high = (float(v) for v in np.percentile(sample, [1, 99])) if sample.size else (0.0, 1.0)
    display.SetWindowLevel(max(high - low, 1.0), 0.5 * (high + low))
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    node.SetAndObserveDisplayNodeID(display.GetID())


# ---------------------------------------------------------------------------------------
# Segmentations
# ---------------------------------------------------------------------------------------
def reference_image(geometry: VolumeGeometry):
    """An empty vtkOrientedImageData describing ``geometry`` (for resampling)."""
    slicer = _slicer()
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, geometry.shape_kji[2] - 1, 0, geometry.shape_kji[1] - 1, 0, geometry.shape_kji[0] - 1)
    image.SetImageToWorldMatrix(_numpy_to_matrix(geometry.ijk_to_ras))
    return image


def segment_ids(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def segment_id_by_name(segmentation_node, name: str) -> str | None:
    for segment_id in segment_ids(segmentation_node):
        if segmentation_node.GetSegmentation().GetSegment(segment_id).GetName() == name:
            return segment_id
    return None


def segment_tag(segment, key: str) -> str | None:
    """A segment's tag value, or None when it has no such tag."""
    from vtkmodules.vtkCommonCore import reference

    value = reference("")
    return str(value) if segment is not None and segment.GetTag(key, value) else None


def segment_mask_on_grid(segmentation_node, segment_id: str, geometry: VolumeGeometry) -> np.ndarray:
    """Binary mask of one segment on ``geometry`` (a full-size array)."""
    mask = np.zeros(geometry.shape_kji, bool)
    found = segment_block_on_grid(segmentation_node, segment_id, geometry)
    if found is not None:
        block_mask, block = found
        mask[block] = block_mask
    return mask


def segment_description(segmentation_node, segment_id: str) -> tuple[str, str, str]:
    """(displayed name, ID, terminology text) of a segment: what it says it is."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    terminology = segment_tag(segment, segment.GetTerminologyEntryTagName()) if hasattr(
        segment, "GetTerminologyEntryTagName") else None
    return segment.GetName(), segment_id, terminology or ""


def _source_representation_name(segmentation) -> str:
    """The segmentation's source representation (named 'master' before Slicer 5.4)."""
    return (segmentation.GetSourceRepresentationName() if hasattr(segmentation, "GetSourceRepresentationName")
            else segmentation.GetMasterRepresentationName())


def _binary_labelmap_name(segmentation_node) -> str:
    """The binary label-map representation's name, created from the source one if needed."""
    slicer = _slicer()
    segmentation = segmentation_node.GetSegmentation()
    binary_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    if _source_representation_name(segmentation) != binary_name and not segmentation.ContainsRepresentation(binary_name):
        segmentation_node.CreateBinaryLabelmapRepresentation()
    return binary_name


def segments_union_on_grid(segmentation_node, segment_ids_wanted, geometry: VolumeGeometry) -> np.ndarray:
    """The union of several segments as one full-size mask on ``geometry``."""
    return segments_labels_on_grid(segmentation_node, segment_ids_wanted, geometry) > 0


def segments_labels_on_grid(segmentation_node, segment_ids_wanted, geometry: VolumeGeometry) -> np.ndarray:
    """Several segments as one full-size label map on ``geometry``: the voxels of
    ``segment_ids_wanted[n]`` hold n + 1 (where two overlap, the later one's).

    Segments sharing a label-map layer (a whole-body segmentation keeps a hundred in
    one) are read from that layer once, not once per segment; a layer on another grid
    is resampled to the nearest voxel, its label values kept.
    """
    slicer = _slicer()
    segmentation = segmentation_node.GetSegmentation()
    binary_name = _binary_labelmap_name(segmentation_node)
    layers: dict = {}
    for number, segment_id in enumerate(segment_ids_wanted, start=1):
        segment = segmentation.GetSegment(segment_id)
        layer = segment.GetRepresentation(binary_name) if segment is not None else None
        if layer is None:
            continue
        entry = layers.setdefault(layer.GetAddressAsString("vtkObject"), (layer, {}))
        entry[1][segment.GetLabelValue()] = number
    labels = np.zeros(geometry.shape_kji, np.uint8 if len(segment_ids_wanted) < 256 else np.uint16)
    for layer, numbers in layers.values():
        if layer.GetPointData().GetScalars() is None:
            continue
        placed = slicer.vtkOrientedImageData()
        placed.ShallowCopy(layer)  # its voxels are only read; its placement is set below
        _place_in_world(placed, segmentation_node)
        found = _labelmap_values_on_grid(placed, geometry, segmentation_node.GetName())
        if found is None:
            continue
        values, target = found
        if values.dtype.kind == "f":  # a label map stored as floating point
            values = np.rint(values).astype(np.int64)
        if values.dtype.kind == "i":  # no label is negative; the lookup needs indices from 0
            values = np.maximum(values, 0)
        lookup = np.zeros(max(int(values.max()), max(numbers)) + 1, labels.dtype)
        for value, number in numbers.items():
            if value >= 0:
                lookup[value] = number
        numbered = lookup[values]
        region = labels[target]
        inside = numbered > 0
        region[inside] = numbered[inside]
    return labels


def segment_block_on_grid(segmentation_node, segment_id: str, geometry: VolumeGeometry):
    """One segment on ``geometry`` as (mask of its bounding block, block slices), or None if empty.

    A segment made on this grid (the usual case) is copied directly; any other
    geometry or a linear parent transform is resampled (nearest neighbour).
    """
    slicer = _slicer()
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        raise InputError(f"Segment '{segment_id}' is not in '{segmentation_node.GetName()}'.")
    _binary_labelmap_name(segmentation_node)
    labelmap = slicer.vtkOrientedImageData()
    # The parent transform is applied here, once, as for a union of segments.
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id,
                                                                                    labelmap, False)
    _place_in_world(labelmap, segmentation_node)
    return _labelmap_block_on_grid(labelmap, segment.GetLabelValue(), geometry, segment.GetName())


def _place_in_world(labelmap, segmentation_node) -> None:
    """Give a label map read from a segmentation its world placement: the segmentation
    node's parent transform applied on top of its image-to-node matrix."""
    labelmap.SetImageToWorldMatrix(_numpy_to_matrix(_node_to_world(segmentation_node, "Segmentation")
                                                    @ _image_to_world(labelmap)))


def _labelmap_block_on_grid(labelmap, label_value: int, geometry: VolumeGeometry, what: str):
    """The voxels of ``labelmap`` (world placement included) holding ``label_value``,
    on ``geometry``, as (block mask, block slices), or None if there are none."""
    found = _labelmap_values_on_grid(labelmap, geometry, what)
    if found is None:
        return None
    # Segments share label-map layers; a segment is the voxels holding its label value.
    values = found[0] == label_value
    inner = bounding_slices(values)
    if inner is None:
        return None
    return values[inner], block_within(found[1], inner)


def _labelmap_values_on_grid(labelmap, geometry: VolumeGeometry, what: str):
    """The values of ``labelmap`` (world placement included) on ``geometry``, resampled
    to the nearest voxel when its grid is another, as (values, the slices of the grid
    they cover); None when it covers no voxel of the grid."""
    slicer = _slicer()
    extent = labelmap.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return None
    if not np.allclose(_image_to_world(labelmap), geometry.ijk_to_ras, atol=1e-4):
        resampled = slicer.vtkOrientedImageData()
        if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                labelmap, reference_image(geometry), resampled, False, True):
            raise InputError(f"Segment '{what}' could not be resampled onto the volume's grid.")
        labelmap = resampled
        extent = labelmap.GetExtent()
    values = _oriented_image_to_array(labelmap)
    k0, j0, i0 = extent[4], extent[2], extent[0]
    target = (slice(max(k0, 0), min(k0 + values.shape[0], geometry.shape_kji[0])),
              slice(max(j0, 0), min(j0 + values.shape[1], geometry.shape_kji[1])),
              slice(max(i0, 0), min(i0 + values.shape[2], geometry.shape_kji[2])))
    if any(t.stop <= t.start for t in target):
        return None
    return values[tuple(slice(t.start - o, t.stop - o) for t, o in zip(target, (k0, j0, i0)))], target


def _image_to_world(oriented_image) -> np.ndarray:
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    matrix = vtkMatrix4x4()
    oriented_image.GetImageToWorldMatrix(matrix)
    return _matrix_to_numpy(matrix)


def _oriented_image_to_array(oriented_image) -> np.ndarray:
    extent = oriented_image.GetExtent()
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    return _numpy_support().vtk_to_numpy(oriented_image.GetPointData().GetScalars()).reshape(shape)


def oriented_image_from_mask(mask: np.ndarray, geometry: VolumeGeometry, offset_kji=(0, 0, 0)):
    """A binary vtkOrientedImageData holding the mask's bounding box.

    ``mask`` may be a block of the grid that starts at array index ``offset_kji``,
    so large volumes never need a full-size copy per segment.
    """
    slicer = _slicer()
    from vtkmodules.vtkCommonCore import VTK_UNSIGNED_CHAR

    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(_numpy_to_matrix(geometry.ijk_to_ras))
    nonzero_slices = bounding_slices(mask)
    if nonzero_slices is None:
        image.SetExtent(0, -1, 0, -1, 0, -1)
        return image
    low = [s.start + o for s, o in zip(nonzero_slices, offset_kji)]
    high = [s.stop - 1 + o for s, o in zip(nonzero_slices, offset_kji)]
    image.SetExtent(low[2], high[2], low[1], high[1], low[0], high[0])
    image.AllocateScalars(VTK_UNSIGNED_CHAR, 1)
    _oriented_image_to_array(image)[...] = mask[nonzero_slices].astype(np.uint8)
    return image


def place_like(node, reference_node) -> None:
    """Put a newly made output node under the parent transform of the node it was made
    from, when that is linear: refining a registration then moves the results with the
    CT, instead of leaving them where the CT was when they were made."""
    transform = reference_node.GetParentTransformNode() if reference_node is not None else None
    if transform is not None and transform.IsLinear():
        node.SetAndObserveTransformNodeID(transform.GetID())


def ensure_segmentation_node(scene, segmentation_node, name: str, reference_volume_node):
    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        place_like(segmentation_node, reference_volume_node)
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    if reference_volume_node is not None:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    return segmentation_node


def use_binary_labelmap_as_source(segmentation_node) -> None:
    """Make the binary label map the segmentation's source representation, its segments
    converted to it first, as Slicer's Segment Editor does before an edit. Label maps
    written into a segmentation whose source is a closed surface (a model imported into
    it) are derived data: they were neither shown as surfaces nor saved."""
    slicer = _slicer()
    segmentation = segmentation_node.GetSegmentation()
    binary_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    if _source_representation_name(segmentation) == binary_name:
        return
    segmentation_node.CreateBinaryLabelmapRepresentation()
    if hasattr(segmentation, "SetSourceRepresentationName"):
        segmentation.SetSourceRepresentationName(binary_name)
    else:
        segmentation.SetMasterRepresentationName(binary_name)


def replace_segments(segmentation_node, masks_by_name: dict, geometry: VolumeGeometry, color, remove_prefix: str | None = None):
    """Put each ``name -> mask`` (or ``name -> (block_mask, offset_kji)``) on ``geometry``
    (world RAS) into the segmentation, replacing segments of the same name. Under a
    parent transform the segments are stored so that they lie where the masks are.
    The segmentation's source representation becomes the binary label map.

    With ``remove_prefix`` every other segment whose name starts with it is removed
    too (a re-run with fewer islands must not leave stale ``HO n`` segments).
    Returns the segment IDs in the order given.
    """
    # Checked before anything changes: a non-linear parent transform is refused here.
    to_node = world_to_node(segmentation_node, "Segmentation")
    use_binary_labelmap_as_source(segmentation_node)
    if not np.allclose(to_node, np.eye(4)):
        geometry = VolumeGeometry(to_node @ geometry.ijk_to_ras, geometry.shape_kji)
    segmentation = segmentation_node.GetSegmentation()
    wanted = set(masks_by_name)
    for segment_id in segment_ids(segmentation_node):
        name = segmentation.GetSegment(segment_id).GetName()
        if name in wanted or (remove_prefix is not None and _has_numbered_prefix(name, remove_prefix)):
            segmentation.RemoveSegment(segment_id)
    created = []
    for name, mask in masks_by_name.items():
        block, offset = mask if isinstance(mask, tuple) else (mask, (0, 0, 0))
        segment_id = segmentation.AddEmptySegment(segmentation.GenerateUniqueSegmentID(segment_id_for(name)), name,
                                                  list(color))
        image = oriented_image_from_mask(block, geometry, offset)
        _keep_in_layer_on_lattice(segmentation, segment_id, image)
        _slicer().vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, segmentation_node, segment_id,
            _slicer().vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        created.append(segment_id)
    return created


def segment_id_for(name: str) -> str:
    """The ID a segment named ``name`` is given (``HO 3`` -> ``HO_3``): Slicer makes up a
    random one, seeded from the clock, for a segment added without an ID, so the same
    run wrote a different segmentation file every time (and a checksum of the results
    never matched)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "Segment"


def _same_lattice(image_a, image_b) -> bool:
    """Whether two oriented images' voxels lie on one lattice (same axes and spacing,
    origins a whole number of voxels apart), so either fits the other without resampling."""
    a, b = _image_to_world(image_a), _image_to_world(image_b)
    if not np.allclose(a[:3, :3], b[:3, :3], rtol=1e-6, atol=1e-6):
        return False
    shift = np.linalg.solve(a[:3, :3], b[:3, 3] - a[:3, 3])
    return bool(np.allclose(shift, np.round(shift), atol=1e-3))


def _is_empty(image) -> bool:
    extent = image.GetExtent()
    return any(extent[2 * axis] > extent[2 * axis + 1] for axis in range(3))


def _keep_in_layer_on_lattice(segmentation, segment_id: str, image) -> None:
    """Put a new, empty segment in a label-map layer whose voxels lie on the lattice of
    ``image`` (the segment's own layer when none does). Segments of one layer share its
    grid: a nerve traced on an MR of other voxels, written into the CT's layer, resampled
    every HO segment onto the MR's grid (a 6.0 mL island read 5.4 mL)."""
    slicer = _slicer()
    binary_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    current = segmentation.GetSegment(segment_id).GetRepresentation(binary_name)
    if current is None or _is_empty(image) or _is_empty(current) or _same_lattice(current, image):
        return
    segmentation.SeparateSegmentLabelmap(segment_id)
    for layer in range(segmentation.GetNumberOfLayers(binary_name)):
        layer_image = segmentation.GetLayerDataObject(layer, binary_name)
        if layer_image is segmentation.GetSegment(segment_id).GetRepresentation(binary_name):
            continue
        if not _is_empty(layer_image) and _same_lattice(layer_image, image):
            label = segmentation.GetUniqueLabelValueForSharedLabelmap(layer_image)
            slicer.vtkOrientedImageDataResample.CastImageForValue(layer_image, label)
            segment = segmentation.GetSegment(segment_id)
            segment.SetLabelValue(label)
            segment.AddRepresentation(binary_name, layer_image)
            return


def move_segments_onto_grid(segmentation_node, geometry: VolumeGeometry) -> list[str]:
    """Resample onto ``geometry`` (world RAS) the segments whose label maps lie on
    another voxel lattice, their names, colours and tags kept, so that every segment lies
    on one grid: Slicer puts a segmentation's label maps on one grid when it saves it, and
    so resampled the CT's HO segments onto the voxels of an MR nerve traced before them.
    Returns the names of the segments moved."""
    slicer = _slicer()
    binary_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    segmentation = segmentation_node.GetSegmentation()
    lattice = slicer.vtkOrientedImageData()
    lattice.SetImageToWorldMatrix(_numpy_to_matrix(world_to_node(segmentation_node, "Segmentation")
                                                   @ geometry.ijk_to_ras))
    moved = []
    for segment_id in segment_ids(segmentation_node):
        segment = segmentation.GetSegment(segment_id)
        labelmap = segment.GetRepresentation(binary_name)
        if labelmap is None or _is_empty(labelmap) or _same_lattice(labelmap, lattice):
            continue
        found = segment_block_on_grid(segmentation_node, segment_id, geometry)
        block = (found[0], tuple(s.start for s in found[1])) if found is not None else (np.zeros((1, 1, 1), bool),
                                                                                       (0, 0, 0))
        metadata = slicer.vtkSegment()
        metadata.DeepCopyMetadata(segment)
        (new_id,) = replace_segments(segmentation_node, {segment.GetName(): block}, geometry, segment.GetColor())
        new_segment = segmentation.GetSegment(new_id)
        label = new_segment.GetLabelValue()
        new_segment.DeepCopyMetadata(metadata)
        new_segment.SetLabelValue(label)
        moved.append(new_segment.GetName())
    return moved


def _has_numbered_prefix(name: str, prefix: str) -> bool:
    return name.startswith(prefix) and name[len(prefix):].strip().isdecimal()


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------
def fill_table(scene, table_node, name: str, columns: list, rows: list):
    """Replace the content of a table node.

    ``columns`` is a list of (key, title, unit, kind, description) with kind in
    'float', 'int', 'str'; ``rows`` a list of dicts keyed by column key.
    """
    from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkIntArray, vtkStringArray

    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    was_modifying = table_node.StartModify()
    table = table_node.GetTable()
    table.Initialize()
    for key, title, unit, kind, description in columns:
        array = {"float": vtkDoubleArray, "int": vtkIntArray, "str": vtkStringArray}[kind]()
        array.SetName(title)
        for row in rows:
            value = row.get(key)
            if kind == "str":
                array.InsertNextValue("" if value is None else str(value))
            elif kind == "int":
                array.InsertNextValue(int(value))
            else:
                array.InsertNextValue(float("nan") if value is None else float(value))
        table.AddColumn(array)
        if unit:
            table_node.SetColumnUnitLabel(title, unit)
        if description:
            table_node.SetColumnDescription(title, description)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.SetLocked(True)
    table.Modified()
    table_node.EndModify(was_modifying)
    return table_node


def set_table_column(table_node, title: str, values) -> bool:
    """Set the values of a float column of a table, one per row (None is NaN); False,
    changing nothing, when the table has no such column or another number of rows."""
    column = table_node.GetTable().GetColumnByName(title)
    if column is None or not column.IsA("vtkDoubleArray") or column.GetNumberOfTuples() != len(values):
        return False
    for row, value in enumerate(values):
        column.SetValue(row, float("nan") if value is None else float(value))
    column.Modified()
    table_node.GetTable().Modified()
    table_node.Modified()
    return True


def column_has_numbers(table_node, title: str) -> bool:
    """Whether a table's float column of that title holds any number (not only NaN)."""
    column = table_node.GetTable().GetColumnByName(title)
    if column is None or not column.IsA("vtkDoubleArray") or column.GetNumberOfTuples() == 0:
        return False
    return bool(np.isfinite(_numpy_support().vtk_to_numpy(column)).any())


def table_columns(table_node) -> dict:
    """Column title -> list of values (numbers or strings)."""
    table = table_node.GetTable()
    result = {}
    for c in range(table.GetNumberOfColumns()):
        column = table.GetColumn(c)
        result[column.GetName()] = [column.GetValue(r) for r in range(column.GetNumberOfTuples())]
    return result


# ---------------------------------------------------------------------------------------
# Markups
# ---------------------------------------------------------------------------------------
def control_points_world(markups_node) -> np.ndarray:
    """World RAS positions of the defined control points of a markups node."""
    points = []
    for n in range(markups_node.GetNumberOfControlPoints()):
        if hasattr(markups_node, "GetNthControlPointPositionStatus") and \
                markups_node.GetNthControlPointPositionStatus(n) != markups_node.PositionDefined:
            continue
        position = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(n, position)
        points.append(position)
    return np.asarray(points, float).reshape(-1, 3)


def points_node_from_array(scene, points_ras: np.ndarray, name: str, node=None):
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.RemoveAllControlPoints()
    for point in np.asarray(points_ras, float):
        node.AddControlPointWorld(float(point[0]), float(point[1]), float(point[2]))
    return node


def roi_mask_on_grid(roi_node, geometry: VolumeGeometry) -> np.ndarray:
    """Voxels of ``geometry`` inside a markups ROI (any orientation)."""

    size = [0.0, 0.0, 0.0]
    if hasattr(roi_node, "GetSizeWorld"):
        roi_node.GetSizeWorld(size)
    else:
        size = list(roi_node.GetSize())
    size = np.array(size, float)
    object_to_world = _matrix_to_numpy(roi_node.GetObjectToWorldMatrix())
    center = np.array([0.0, 0.0, 0.0])
    roi_node.GetCenterWorld(center)
    return box_mask_on_grid(center, object_to_world[:3, :3], size, geometry)


def box_mask_on_grid(center_ras, axes_ras: np.ndarray, size_mm, geometry: VolumeGeometry) -> np.ndarray:
    """Mask of an oriented box (columns of ``axes_ras`` = box axes) on the grid."""
    size_mm = np.asarray(size_mm, float)
    axes = np.asarray(axes_ras, float)
    if (not np.all(np.isfinite(center_ras)) or not np.all(np.isfinite(axes))
            or np.any(np.linalg.norm(axes, axis=0) < 1e-6)):
        raise InputError("The ROI has no usable position or orientation (coordinates that are not numbers, or an "
                         "orientation of zero). Place the ROI again (Markups > ROI) around the hip region to analyse.")
    if not np.all(np.isfinite(size_mm)) or np.any(size_mm <= 0):
        size_text = ", ".join(f"{float(v):.2f}" for v in size_mm)
        raise InputError(f"The ROI's size ({size_text}) mm is zero, negative or not a number along an axis. Resize "
                         "the ROI so that it encloses the hip region to analyse.")
    axes = axes / np.linalg.norm(axes, axis=0, keepdims=True)
    half = size_mm / 2.0
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
    corners_ras = np.asarray(center_ras, float) + corners @ axes.T
    block = geometry.bounding_slices_of_ras_box(corners_ras, margin_mm=0.0)
    mask = np.zeros(geometry.shape_kji, bool)
    if any(s.stop <= s.start for s in block):
        raise InputError("The ROI lies entirely outside the volume. Move the ROI onto the hip region of the image.")
    points = geometry.voxel_ras_grid(block) - np.asarray(center_ras, np.float32)
    local = points @ axes.astype(np.float32)
    mask[block] = np.all(np.abs(local) <= half.astype(np.float32), axis=-1)
    if not mask.any():
        raise InputError("The ROI contains no voxel of the volume. Move or enlarge the ROI.")
    return mask


def _double_array(name: str, values):
    from vtkmodules.vtkCommonCore import vtkDoubleArray

    array = vtkDoubleArray()
    array.SetName(name)
    for value in values:
        array.InsertNextValue(float("nan") if value is None else float(value))
    return array


def fill_centreline_curve(scene, curve_node, name: str, points_ras: np.ndarray, measurements: dict,
                          placed_like=None):
    """Write a centreline as a markups curve with one control point per station.

    ``measurements`` maps array name -> (unit, description, values per station);
    each becomes a static per-control-point measurement, which the curve also
    interpolates onto its curve points so it can be coloured by it. A new curve goes
    under the parent transform of ``placed_like`` (see :func:`place_like`).
    """
    slicer = _slicer()
    from vtkmodules.vtkCommonCore import vtkPoints

    if curve_node is None:
        curve_node = scene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", name)
        place_like(curve_node, placed_like)
    was_modifying = curve_node.StartModify()
    curve_node.SetName(name)
    curve_node.SetCurveTypeToLinear()
    points = vtkPoints()
    for point in np.asarray(points_ras, float):
        points.InsertNextPoint(*point)
    curve_node.SetControlPointPositionsWorld(points)
    for n in range(curve_node.GetNumberOfControlPoints()):
        curve_node.SetNthControlPointLocked(n, True)
        curve_node.SetNthControlPointLabel(n, "")
    kept = []
    for index in range(curve_node.GetNumberOfMeasurements()):
        measurement = curve_node.GetNthMeasurement(index)
        if measurement.GetName() not in measurements and not isinstance(measurement, slicer.vtkMRMLStaticMeasurement):
            kept.append(measurement)
    curve_node.RemoveAllMeasurements()
    for measurement in kept:
        curve_node.AddMeasurement(measurement)
    for array_name, (unit, description, values) in measurements.items():
        curve_node.AddMeasurement(_static_measurement(array_name, unit, description, values))
    curve_node.EndModify(was_modifying)
    if curve_node.GetDisplayNode() is None:
        curve_node.CreateDefaultDisplayNodes()
    display = curve_node.GetDisplayNode()
    display.SetSelectedColor(*NERVE_COLOR)
    display.SetPointLabelsVisibility(False)
    return curve_node


def _static_measurement(array_name: str, unit: str, description: str, values):
    """A per-control-point measurement of a curve (None values are NaN)."""
    measurement = _slicer().vtkMRMLStaticMeasurement()
    measurement.SetName(array_name)
    measurement.SetUnits(unit)
    measurement.SetDescription(description)
    measurement.SetPrintFormat("")
    measurement.SetControlPointValues(_double_array(array_name, values))
    return measurement


def set_curve_measurement(curve_node, array_name: str, unit: str, description: str, values) -> None:
    """Set one per-control-point measurement of a curve, its others left as they are."""
    for index in reversed(range(curve_node.GetNumberOfMeasurements())):
        if curve_node.GetNthMeasurement(index).GetName() == array_name:
            curve_node.RemoveNthMeasurement(index)
    curve_node.AddMeasurement(_static_measurement(array_name, unit, description, values))


def curve_measurement(curve_node, array_name: str) -> np.ndarray | None:
    """Per-control-point values of a static measurement on a curve."""
    for index in range(curve_node.GetNumberOfMeasurements()):
        measurement = curve_node.GetNthMeasurement(index)
        if measurement.GetName() == array_name and measurement.GetControlPointValues() is not None:
            values = measurement.GetControlPointValues()
            return np.array([values.GetValue(n) for n in range(values.GetNumberOfTuples())])
    return None


def station_nearest_to_ho(curve_node) -> np.ndarray | None:
    """The centreline point (world RAS) whose station lies nearest to HO, from the
    curve's distance_to_ho_mm array (saved with the scene); None before contact was
    computed, or with no HO."""
    distances = curve_measurement(curve_node, "distance_to_ho_mm")
    if distances is None or len(distances) == 0 or not np.isfinite(distances).any():
        return None
    return control_points_world(curve_node)[int(np.nanargmin(np.where(np.isfinite(distances), distances, np.nan)))]


def colour_curve_by(curve_node, array_name: str, value_range) -> None:
    """Show the curve coloured by one of its per-point arrays."""
    display = curve_node.GetDisplayNode()
    if display is None:
        return
    display.SetActiveScalar(array_name, display.GetActiveAttributeLocation() if hasattr(display, "GetActiveAttributeLocation") else 0)
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeRainbow")
    display.SetScalarRangeFlag(display.UseManualScalarRange)
    display.SetScalarRange(float(value_range[0]), float(value_range[1]))
    display.SetScalarVisibility(True)


# ---------------------------------------------------------------------------------------
# Plots and models
# ---------------------------------------------------------------------------------------
def fill_plot_chart(scene, chart_node, name: str, table_node, x_column: str, y_columns: list, y_title: str,
                    dashed=()):
    """A line chart of table columns against ``x_column``, those named in ``dashed``
    drawn dashed; series nodes are reused by name."""
    slicer = _slicer()
    if chart_node is None:
        chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart_node.SetTitle(name)
    chart_node.SetXAxisTitle(x_column)
    chart_node.SetYAxisTitle(y_title)
    existing = {}
    for n in range(chart_node.GetNumberOfPlotSeriesNodes()):
        series = chart_node.GetNthPlotSeriesNode(n)
        if series is not None:
            existing[series.GetName()] = series
    chart_node.RemoveAllPlotSeriesNodeIDs()
    colors = [(0.85, 0.2, 0.2), (0.2, 0.45, 0.85), (0.2, 0.7, 0.3), (0.6, 0.3, 0.7)]
    for index, column in enumerate(y_columns):
        series_name = f"{name}: {column}"
        # A series left behind by a deleted chart is taken up again, not duplicated.
        left = scene.GetNodesByClassByName("vtkMRMLPlotSeriesNode", series_name)
        series = (existing.pop(series_name, None) or (left.GetItemAsObject(0) if left.GetNumberOfItems() else None)
                  or scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", series_name))
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName(x_column)
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        series.SetColor(*colors[index % len(colors)])
        series.SetLineStyle(series.LineStyleDash if column in dashed else series.LineStyleSolid)
        chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
    for stale in existing.values():
        scene.RemoveNode(stale)
    return chart_node


def polydata_from_mesh(vertices_ras: np.ndarray, faces: np.ndarray, point_arrays: dict | None = None):
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData

    numpy_support = _numpy_support()
    polydata = vtkPolyData()
    points = vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(vertices_ras, dtype=np.float32), deep=True))
    polydata.SetPoints(points)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    cells = vtkCellArray()
    offsets = numpy_support.numpy_to_vtkIdTypeArray(np.arange(0, 3 * len(faces) + 1, 3, dtype=np.int64), deep=True)
    connectivity = numpy_support.numpy_to_vtkIdTypeArray(np.ascontiguousarray(faces.ravel()), deep=True)
    cells.SetData(offsets, connectivity)
    polydata.SetPolys(cells)
    for array_name, values in (point_arrays or {}).items():
        array = numpy_support.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float32), deep=True)
        array.SetName(array_name)
        polydata.GetPointData().AddArray(array)
    return polydata


def fill_model(scene, model_node, name: str, polydata, color=None, scalar_name: str | None = None,
               scalar_range=None, color_node_id: str = "vtkMRMLColorTableNodeRainbow", placed_like=None):
    """Show ``polydata`` (points in world RAS) in a model node, placed where its points
    are even if the node is under a parent transform; a new model goes under the parent
    transform of ``placed_like`` (see :func:`place_like`)."""
    if model_node is None:
        model_node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
        place_like(model_node, placed_like)
    to_node = world_to_node(model_node, "Model")
    if not np.allclose(to_node, np.eye(4)) and polydata.GetNumberOfPoints():
        points = _numpy_support().vtk_to_numpy(polydata.GetPoints().GetData())
        points[:] = points @ to_node[:3, :3].T + to_node[:3, 3]
        polydata.GetPoints().Modified()
    model_node.SetAndObservePolyData(polydata)
    if model_node.GetDisplayNode() is None:
        model_node.CreateDefaultDisplayNodes()
    display = model_node.GetDisplayNode()
    if color is not None:
        display.SetColor(*color)
    if scalar_name:
        polydata.GetPointData().SetActiveScalars(scalar_name)
        display.SetActiveScalarName(scalar_name)
        display.SetAndObserveColorNodeID(color_node_id)
        if scalar_range is not None:
            display.SetScalarRangeFlag(display.UseManualScalarRange)
            display.SetScalarRange(float(scalar_range[0]), float(scalar_range[1]))
        display.SetScalarVisibility(True)
    display.SetVisibility2D(True)
    return model_node


# ---------------------------------------------------------------------------------------
# Subject hierarchy
# ---------------------------------------------------------------------------------------
def place_in_folder(scene, folder_name: str, nodes) -> int:
    """Put the nodes under one subject-hierarchy folder (created once, found by name)."""
    slicer = _slicer()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return 0
    scene_item = hierarchy.GetSceneItemID()
    folder = hierarchy.GetItemChildWithName(scene_item, folder_name)
    if not folder:
        folder = hierarchy.CreateFolderItem(scene_item, folder_name)
    for node in nodes:
        if node is None:
            continue
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, folder)
    return folder
