"""Deterministic synthetic hip-region CT and T2 fat-saturated MR with ground truth.

The anatomy is described analytically in RAS millimetres (signed distances of
tubes, ellipsoids and shells), so any voxel grid -- anisotropic, rotated or
flipped -- samples the same patient. Intensities are painted tissue by tissue,
blurred with a Gaussian point-spread function (partial volume) and given
Gaussian noise. Truth (HO labels, nerve mask, centreline, cross-section and the
analytic island figures) comes from the same description.

Layout of the default case (a right hip, RAS, centred on ``center_ras``): the
sciatic nerve runs roughly superior-inferior; the femur lies lateral and
anterior, the ischium medial; three HO islands -- one wrapped part-way around
the nerve, one free in the gluteal muscles, one fused to the femur -- and small
vascular calcifications along an artery.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree

from .geometry import VolumeGeometry, arc_length_mm

# Typical attenuation (HU) and T2 fat-sat signal (arbitrary units) of each tissue.
CT_VALUES = {
    "air": -1000.0, "fat": -100.0, "muscle": 50.0, "nerve": 30.0, "vessel": 40.0,
    "cortical_bone": 1300.0, "cancellous_bone": 280.0, "fatty_marrow": 20.0,
    "ho_cortex": 950.0, "ho_marrow": 60.0, "ho_immature": 380.0, "calcification": 650.0,
}
MR_T2FS_VALUES = {
    "air": 5.0, "fat": 45.0, "muscle": 160.0, "nerve": 520.0, "vessel": 60.0,
    "cortical_bone": 15.0, "cancellous_bone": 70.0, "fatty_marrow": 55.0,
    "ho_cortex": 15.0, "ho_marrow": 60.0, "ho_immature": 120.0, "calcification": 15.0,
}


@dataclass
class IslandSpec:
    """One HO island. ``kind`` is 'ellipsoid' (centre, semi_axes), 'shell' (a sector
    of a sleeve around the nerve: start/stop arc length, angle) or 'bar' (a rod of
    ``radius_mm`` along the polyline ``path``, as HO bridging femur and pelvis)."""

    name: str
    kind: str
    mature: bool = True
    center_offset: tuple = (0.0, 0.0, 0.0)   # ellipsoid centre relative to center_ras
    semi_axes: tuple = (8.0, 6.0, 7.0)
    s_start_mm: float = 0.0                   # shell: arc-length span along the nerve
    s_stop_mm: float = 20.0
    sector_deg: float = 270.0                 # shell: angular coverage
    sector_center_deg: float = 0.0            # shell: direction of the sector's middle
    gap_mm: float = 0.0                       # shell: clearance from the nerve surface
    thickness_mm: float = 6.0
    cortex_mm: float = 2.0
    path: tuple = ()                          # bar: polyline relative to center_ras
    radius_mm: float = 5.0                    # bar: radius


@dataclass
class BoneSpec:
    """A further native bone: an ellipsoid (hip bone body, iliac wing, sacrum) or a
    capsule (a femoral shaft), with a cortex around cancellous bone or fatty marrow."""

    kind: str                                 # 'ellipsoid' or 'capsule'
    center_offset: tuple = (0.0, 0.0, 0.0)    # ellipsoid centre relative to center_ras
    semi_axes: tuple = (20.0, 20.0, 20.0)
    axis: tuple = ((0.0, 0.0, -50.0), (0.0, 0.0, 50.0))   # capsule ends relative to center_ras
    radius_mm: float = 12.0
    cortex_mm: float = 2.0
    interior: str = "cancellous_bone"


@dataclass
class PhantomSpec:
    """Analytic description of the case; every length is in millimetres."""

    center_ras: tuple = (80.0, -20.0, -120.0)
    nerve_control_points: tuple = (
        (-4.0, 2.0, -75.0), (2.0, -2.0, -40.0), (6.0, -4.0, -5.0), (3.0, -1.0, 30.0), (-3.0, 3.0, 75.0),
    )
    nerve_semi_axes: tuple = (6.0, 3.5)       # flattened: 12 x 7 mm
    nerve_sheath_mm: float = 3.0
    thickening_center_s_mm: float | None = 62.0
    thickening_half_length_mm: float = 12.0
    thickening_scale: float = 1.3
    #: On MR, the nerve's signal raised over a stretch (oedema of a compressed nerve: T2
    #: bright), with the same raised-cosine profile as the thickening; None: even all along.
    nerve_signal_center_s_mm: float | None = None
    nerve_signal_half_length_mm: float = 12.0
    nerve_signal_scale: float = 1.0
    include_native_bone: bool = True
    femur_axis: tuple = ((34.0, 14.0, -90.0), (40.0, 16.0, 90.0))
    femur_radius_mm: float = 13.0
    femur_cortex_mm: float = 4.0
    ischium_axis: tuple = ((-30.0, 6.0, -20.0), (-27.0, 4.0, 90.0))
    ischium_radius_mm: float = 12.0
    ischium_cortex_mm: float = 2.0
    #: More native bone (the rest of a pelvis), for cases as wide as a real hip CT.
    extra_bones: tuple = ()
    artery_axis: tuple = ((-14.0, 24.0, -90.0), (-10.0, 22.0, 90.0))
    artery_radius_mm: float = 3.0
    #: HU of the artery's blood on a contrast-enhanced CT (None: no contrast).
    contrast_artery_hu: float | None = None
    calcification_z: tuple = (-50.0, -10.0, 35.0)
    calcification_radius_mm: float = 1.6
    body_center_offset: tuple = (-45.0, 5.0)
    body_semi_axes: tuple = (105.0, 80.0)
    subcutaneous_fat_mm: float = 12.0
    islands: tuple = field(default_factory=lambda: (
        IslandSpec("wrap", "shell", True, s_start_mm=70.0, s_stop_mm=95.0, sector_deg=270.0,
                   sector_center_deg=0.0, gap_mm=0.0, thickness_mm=6.0),
        IslandSpec("free", "ellipsoid", True, center_offset=(16.0, -26.0, -35.0), semi_axes=(10.0, 7.0, 9.0)),
        IslandSpec("fused", "ellipsoid", False, center_offset=(42.0, -2.0, 45.0), semi_axes=(8.0, 8.0, 11.0)),
    ))
    psf_sigma_mm: float = 0.6
    noise_sigma: float = 12.0
    #: Each voxel averages the anatomy over its whole extent (sampled every
    #: INTEGRATION_STEP_MM), as a CT's thick slice averages its slab; off, a voxel shows
    #: the anatomy at its centre.
    integrate_voxels: bool = False


#: Sampling step of a voxel's extent when the phantom integrates over it.
INTEGRATION_STEP_MM = 1.0


def other_hip_bones(spec: PhantomSpec) -> tuple:
    """The other hip's femur and ischium: the case's own, mirrored across the body's
    midline (the body's centre in R), so that both hips are imaged."""
    midline = spec.body_center_offset[0]

    def mirrored(axis):
        return tuple((2.0 * midline - point[0],) + tuple(point[1:]) for point in axis)

    return (
        BoneSpec("capsule", axis=mirrored(spec.femur_axis), radius_mm=spec.femur_radius_mm,
                 cortex_mm=spec.femur_cortex_mm, interior="fatty_marrow"),
        BoneSpec("capsule", axis=mirrored(spec.ischium_axis), radius_mm=spec.ischium_radius_mm,
                 cortex_mm=spec.ischium_cortex_mm),
    )


@dataclass
class Phantom:
    """A generated case: image, grid geometry and ground truth."""

    image: np.ndarray               # (k, j, i) float32: HU for CT, signal for MR
    geometry: VolumeGeometry
    modality: str
    ho_labels: np.ndarray           # uint8, island index + 1 (spec order), 0 elsewhere
    nerve_mask: np.ndarray          # bool
    native_bone_mask: np.ndarray    # bool
    calcification_mask: np.ndarray  # bool
    centreline_ras: np.ndarray      # (N, 3) true centreline sampled every 0.25 mm
    centreline_s_mm: np.ndarray     # (N,) arc length
    semi_axes_mm: np.ndarray        # (N, 2) true cross-section semi-axes
    spec: PhantomSpec
    islands: list                   # dicts with analytic truth per island

    @property
    def true_equivalent_diameter_mm(self) -> np.ndarray:
        return 2.0 * np.sqrt(self.semi_axes_mm[:, 0] * self.semi_axes_mm[:, 1])

    def seeds_ras(self, s_values_mm) -> np.ndarray:
        """Points on the true centreline at the given arc lengths."""
        return np.array([self.centreline_ras[np.argmin(np.abs(self.centreline_s_mm - s))] for s in s_values_mm])


# ---------------------------------------------------------------------------------------
# Analytic shapes
# ---------------------------------------------------------------------------------------
def _dense_nerve_curve(spec: PhantomSpec, step_mm: float = 0.25):
    control = np.asarray(spec.nerve_control_points, float) + np.asarray(spec.center_ras, float)
    chord = arc_length_mm(control)
    spline = CubicSpline(chord, control, bc_type="natural")
    fine_t = np.linspace(0.0, chord[-1], int(chord[-1] / 0.05) + 1)
    fine = spline(fine_t)
    fine_s = arc_length_mm(fine)
    s = np.arange(0.0, fine_s[-1], step_mm)
    points = np.stack([np.interp(s, fine_s, fine[:, a]) for a in range(3)], axis=1)
    tangents = np.gradient(points, axis=0)
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    # Major axis of the flattened nerve points laterally (R-L), made orthogonal to the tangent.
    lateral = np.array([1.0, 0.0, 0.0])
    normals = lateral - tangents * (tangents @ lateral)[:, None]
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    binormals = np.cross(tangents, normals)
    return s, points, tangents, normals, binormals


def _raised_cosine(s: np.ndarray, center: float | None, half_length: float, peak: float) -> np.ndarray:
    """1 away from ``center``, rising smoothly to ``peak`` at it over ``half_length``."""
    if center is None:
        return np.ones_like(s, dtype=float)
    x = (s - center) / half_length
    return 1.0 + (peak - 1.0) * np.where(np.abs(x) < 1.0, 0.5 * (1 + np.cos(np.pi * x)), 0.0)


def nerve_signal_scale_along(spec: PhantomSpec, s: np.ndarray) -> np.ndarray:
    """The factor the MR nerve's signal is raised by at arc lengths ``s``."""
    return _raised_cosine(np.asarray(s, float), spec.nerve_signal_center_s_mm, spec.nerve_signal_half_length_mm,
                          spec.nerve_signal_scale)


def _semi_axes_along(spec: PhantomSpec, s: np.ndarray) -> np.ndarray:
    scale = _raised_cosine(s, spec.thickening_center_s_mm, spec.thickening_half_length_mm, spec.thickening_scale)
    return np.stack([spec.nerve_semi_axes[0] * scale, spec.nerve_semi_axes[1] * scale], axis=1)


def _ellipse_signed_distance(u, v, a, b):
    """Approximate signed distance (mm) to an ellipse boundary (negative inside)."""
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    gradient = np.sqrt((u / a ** 2) ** 2 + (v / b ** 2) ** 2)
    safe = np.where(gradient > 1e-9, gradient, 1.0)
    return np.where(gradient > 1e-9, (rho - 1.0) * rho / safe, -np.minimum(a, b))


def _segment_signed_distance(points, start, stop, radius):
    """Signed distance to a capsule (cylinder with rounded ends) of given radius."""
    start = np.asarray(start, float)
    axis = np.asarray(stop, float) - start
    t = np.clip(((points - start) @ axis) / (axis @ axis), 0.0, 1.0)
    return np.linalg.norm(points - (start + t[..., None] * axis), axis=-1) - radius


def _ellipsoid_signed_distance(points, center, semi_axes):
    q = (points - center) / np.asarray(semi_axes, float)
    rho = np.linalg.norm(q, axis=-1)
    return (rho - 1.0) * np.min(semi_axes)


class _NerveFrame:
    """Nearest-point coordinates of voxels relative to the nerve centreline."""

    def __init__(self, spec: PhantomSpec):
        self.s, self.points, self.tangents, self.normals, self.binormals = _dense_nerve_curve(spec)
        self.semi_axes = _semi_axes_along(spec, self.s)
        self.tree = cKDTree(self.points)

    def coordinates(self, points: np.ndarray):
        flat = points.reshape(-1, 3)
        _, index = self.tree.query(flat, workers=-1)
        offset = flat - self.points[index]
        u = np.einsum("ij,ij->i", offset, self.normals[index])
        v = np.einsum("ij,ij->i", offset, self.binormals[index])
        w = np.einsum("ij,ij->i", offset, self.tangents[index])
        a, b = self.semi_axes[index, 0], self.semi_axes[index, 1]
        distance = _ellipse_signed_distance(u, v, a, b)
        # Beyond the ends of the curve the tube is capped flat.
        beyond = ((index == 0) & (w < 0)) | ((index == len(self.s) - 1) & (w > 0))
        distance = np.where(beyond, np.maximum(distance, np.abs(w)), distance)
        shape = points.shape[:-1]
        return (self.s[index].reshape(shape), np.degrees(np.arctan2(v, u)).reshape(shape), distance.reshape(shape))


def _shell_signed_distance(island: IslandSpec, s, angle_deg, nerve_distance, mean_radius):
    radial = np.maximum(island.gap_mm - nerve_distance, nerve_distance - island.gap_mm - island.thickness_mm)
    along = np.maximum(island.s_start_mm - s, s - island.s_stop_mm)
    delta = (angle_deg - island.sector_center_deg + 180.0) % 360.0 - 180.0
    arc = (np.abs(delta) - island.sector_deg / 2.0) * np.pi / 180.0 * (mean_radius + island.gap_mm + island.thickness_mm / 2)
    if island.sector_deg >= 360.0:
        arc = np.full_like(arc, -np.inf)
    return np.maximum(np.maximum(radial, along), arc)


# ---------------------------------------------------------------------------------------
# Painting
# ---------------------------------------------------------------------------------------
def _paint_block(spec: PhantomSpec, frame: _NerveFrame, points: np.ndarray, values: dict):
    """Tissue intensities and truth labels for a block of RAS points (..., 3)."""
    center = np.asarray(spec.center_ras, float)
    shape = points.shape[:-1]
    image = np.full(shape, values["air"], np.float32)
    offset = points - center
    body = ((offset[..., 0] - spec.body_center_offset[0]) / spec.body_semi_axes[0]) ** 2 + (
        (offset[..., 1] - spec.body_center_offset[1]) / spec.body_semi_axes[1]) ** 2
    image[body <= 1.0] = values["fat"]
    inner = ((offset[..., 0] - spec.body_center_offset[0]) / (spec.body_semi_axes[0] - spec.subcutaneous_fat_mm)) ** 2 + (
        (offset[..., 1] - spec.body_center_offset[1]) / (spec.body_semi_axes[1] - spec.subcutaneous_fat_mm)) ** 2
    image[inner <= 1.0] = values["muscle"]

    s, angle, nerve_distance = frame.coordinates(points)
    image[(nerve_distance <= spec.nerve_sheath_mm) & (inner <= 1.0)] = values["fat"]

    artery = _segment_signed_distance(points, center + spec.artery_axis[0], center + spec.artery_axis[1], spec.artery_radius_mm)
    image[artery <= 0] = values["vessel"] if spec.contrast_artery_hu is None or values is not CT_VALUES \
        else spec.contrast_artery_hu
    calcification = np.zeros(shape, bool)
    for z in spec.calcification_z:
        a0, a1 = center + np.asarray(spec.artery_axis[0]), center + np.asarray(spec.artery_axis[1])
        t = (z - spec.artery_axis[0][2]) / (spec.artery_axis[1][2] - spec.artery_axis[0][2])
        wall = a0 + t * (a1 - a0) + np.array([spec.artery_radius_mm * 0.7, 0.0, 0.0])
        calcification |= np.linalg.norm(points - wall, axis=-1) <= spec.calcification_radius_mm
    image[calcification] = values["calcification"]

    native = np.zeros(shape, bool)
    if spec.include_native_bone:
        femur = _segment_signed_distance(points, center + spec.femur_axis[0], center + spec.femur_axis[1], spec.femur_radius_mm)
        image[femur <= 0] = values["cortical_bone"]
        image[femur <= -spec.femur_cortex_mm] = values["fatty_marrow"]
        ischium = _segment_signed_distance(points, center + spec.ischium_axis[0], center + spec.ischium_axis[1], spec.ischium_radius_mm)
        image[ischium <= 0] = values["cortical_bone"]
        image[ischium <= -spec.ischium_cortex_mm] = values["cancellous_bone"]
        native = (femur <= 0) | (ischium <= 0)
        for bone in spec.extra_bones:
            if bone.kind == "capsule":
                distance = _segment_signed_distance(points, center + bone.axis[0], center + bone.axis[1],
                                                    bone.radius_mm)
            else:
                distance = _ellipsoid_signed_distance(points, center + np.asarray(bone.center_offset),
                                                      bone.semi_axes)
            image[distance <= 0] = values["cortical_bone"]
            image[distance <= -bone.cortex_mm] = values[bone.interior]
            native |= distance <= 0

    labels = np.zeros(shape, np.uint8)
    mean_radius = float(np.sqrt(np.prod(spec.nerve_semi_axes)))
    for index, island in enumerate(spec.islands, start=1):
        if island.kind == "shell":
            distance = _shell_signed_distance(island, s, angle, nerve_distance, mean_radius)
        elif island.kind == "bar":
            distance = np.min([_segment_signed_distance(points, center + np.asarray(a), center + np.asarray(b),
                                                        island.radius_mm)
                               for a, b in zip(island.path[:-1], island.path[1:])], axis=0)
        else:
            distance = _ellipsoid_signed_distance(points, center + np.asarray(island.center_offset), island.semi_axes)
        inside = (distance <= 0) & ~native
        if island.mature:
            image[inside] = values["ho_cortex"]
            image[inside & (distance <= -island.cortex_mm)] = values["ho_marrow"]
        else:
            image[inside] = values["ho_immature"]
        labels[inside] = index

    nerve = nerve_distance <= 0
    image[nerve] = values["nerve"] * (nerve_signal_scale_along(spec, s[nerve]) if values is MR_T2FS_VALUES else 1.0)
    labels[nerve] = 0
    return image, labels, nerve, native, calcification & ~native


def _voxel_average(spec: PhantomSpec, frame, centres: np.ndarray, values: dict, geometry: VolumeGeometry):
    """The image averaged over each voxel's extent (truth labels stay those of the centre)."""
    counts = [max(1, int(np.ceil(s / INTEGRATION_STEP_MM))) for s in geometry.spacing_ijk]
    fractions = [(np.arange(n) + 0.5) / n - 0.5 for n in counts]
    total = np.zeros(centres.shape[:-1], np.float32)
    for fi in fractions[0]:
        for fj in fractions[1]:
            for fk in fractions[2]:
                shift = geometry.ijk_to_ras[:3, :3] @ np.array([fi, fj, fk])
                total += _paint_block(spec, frame, centres + shift, values)[0]
    return total / float(np.prod(counts))


def generate_phantom(
    spec: PhantomSpec | None = None,
    modality: str = "ct",
    spacing_ijk=(0.8, 0.8, 1.5),
    shape_kji=None,
    fov_mm=(120.0, 120.0, 150.0),
    directions_ras=None,
    seed: int = 7,
    chunk_slices: int = 32,
) -> Phantom:
    """Generate a case on a grid centred on the anatomy.

    ``directions_ras`` (3x3, columns = RAS directions of i, j, k) may rotate or flip
    the grid; the anatomy stays where it is in RAS. ``shape_kji`` overrides the
    field of view. Same arguments, same output (the noise is seeded).
    """
    spec = spec or PhantomSpec()
    values = CT_VALUES if modality == "ct" else MR_T2FS_VALUES
    spacing = np.asarray(spacing_ijk, float)
    if shape_kji is None:
        shape_kji = tuple(int(round(f / s)) for f, s in zip(fov_mm[::-1], spacing[::-1]))
    directions = np.eye(3) if directions_ras is None else np.asarray(directions_ras, float)
    extent_ijk = (np.asarray(shape_kji[::-1], float) - 1.0) * spacing
    origin = np.asarray(spec.center_ras, float) - directions @ (extent_ijk / 2.0)
    geometry = VolumeGeometry.from_spacing_origin_directions(shape_kji, spacing, origin, directions)

    frame = _NerveFrame(spec)
    image = np.empty(shape_kji, np.float32)
    labels = np.empty(shape_kji, np.uint8)
    nerve = np.empty(shape_kji, bool)
    native = np.empty(shape_kji, bool)
    calcification = np.empty(shape_kji, bool)
    for k0 in range(0, shape_kji[0], chunk_slices):
        block = (slice(k0, min(k0 + chunk_slices, shape_kji[0])), slice(0, shape_kji[1]), slice(0, shape_kji[2]))
        points = geometry.voxel_ras_grid(block).astype(np.float64)
        outputs = _paint_block(spec, frame, points, values)
        for target, value in zip((image, labels, nerve, native, calcification), outputs):
            target[block] = value
        if spec.integrate_voxels:
            image[block] = _voxel_average(spec, frame, points, values, geometry)

    sigma_voxels = spec.psf_sigma_mm / np.asarray(geometry.spacing_kji)
    ndimage.gaussian_filter(image, sigma=sigma_voxels, output=image, mode="nearest")
    rng = np.random.default_rng(seed)
    noise_sigma = spec.noise_sigma if modality == "ct" else spec.noise_sigma * 1.5
    for k0 in range(0, shape_kji[0], chunk_slices):
        block = slice(k0, min(k0 + chunk_slices, shape_kji[0]))
        image[block] += rng.normal(0.0, noise_sigma, image[block].shape).astype(np.float32)
    if modality != "ct":
        np.maximum(image, 0.0, out=image)

    islands = _island_truth(spec, labels, native, geometry)
    return Phantom(image, geometry, modality, labels, nerve, native, calcification,
                   frame.points, frame.s, frame.semi_axes, spec, islands)


def _island_truth(spec: PhantomSpec, labels: np.ndarray, native: np.ndarray, geometry: VolumeGeometry) -> list:
    counts = np.bincount(labels.ravel(), minlength=len(spec.islands) + 1)
    truth = []
    for index, island in enumerate(spec.islands, start=1):
        analytic = None
        if island.kind == "ellipsoid":
            analytic = 4.0 / 3.0 * np.pi * float(np.prod(island.semi_axes)) / 1000.0
        truth.append({
            "label": index,
            "name": island.name,
            "kind": island.kind,
            "mature": island.mature,
            "fused_to_native_bone": bool(np.any(native & ndimage.binary_dilation(labels == index))),
            "volume_ml": float(counts[index]) * geometry.voxel_volume_ml,
            "analytic_volume_ml": analytic,
            "sector_deg": island.sector_deg if island.kind == "shell" else None,
            "s_span_mm": [island.s_start_mm, island.s_stop_mm] if island.kind == "shell" else None,
            "gap_mm": island.gap_mm if island.kind == "shell" else None,
        })
    return truth


def make_shell_spec(sector_deg: float, gap_mm: float = 0.0, length_mm: float = 30.0, sector_center_deg: float = 0.0,
                    radius_mm: float = 5.0, straight: bool = True, **overrides) -> PhantomSpec:
    """A minimal case for contact geometry: a round nerve and one HO shell.

    No native bone, no calcification, no thickening, so the expected metrics are
    analytic: encasement = sector + 4 asin(tau / 2r), contact length = length + 2 tau.
    """
    control = ((0.0, 0.0, -50.0), (0.0, 0.0, -15.0), (0.0, 0.0, 15.0), (0.0, 0.0, 50.0)) if straight else (
        (-5.0, 0.0, -50.0), (2.0, 3.0, -15.0), (4.0, -2.0, 15.0), (-3.0, 0.0, 50.0))
    fields = dict(
        nerve_control_points=control, nerve_semi_axes=(radius_mm, radius_mm), thickening_center_s_mm=None,
        include_native_bone=False, calcification_z=(),
        islands=(IslandSpec("shell", "shell", True, s_start_mm=50.0 - length_mm / 2, s_stop_mm=50.0 + length_mm / 2,
                            sector_deg=sector_deg, sector_center_deg=sector_center_deg, gap_mm=gap_mm,
                            thickness_mm=6.0),),
    )
    fields.update(overrides)
    return PhantomSpec(**fields)


# ---------------------------------------------------------------------------------------
# Writing a case to disk
# ---------------------------------------------------------------------------------------
def centred_on_the_midline(spec: PhantomSpec) -> PhantomSpec:
    """The same anatomy on a grid whose centre (``center_ras``) lies on the body's midline,
    so that flipping the grid's columns mirrors it across the midline. Islands placed by
    their own offsets are not moved: for a spec whose HO follows the nerve (a shell)."""
    shift = spec.body_center_offset[0]

    def moved(points):
        return tuple((p[0] - shift,) + tuple(p[1:]) for p in points)

    return dataclasses.replace(
        spec, center_ras=(spec.center_ras[0] + shift,) + tuple(spec.center_ras[1:]),
        nerve_control_points=moved(spec.nerve_control_points), femur_axis=moved(spec.femur_axis),
        ischium_axis=moved(spec.ischium_axis), artery_axis=moved(spec.artery_axis),
        body_center_offset=(0.0, spec.body_center_offset[1]))


@dataclass
class TwoHips:
    """One image of both hips: ``right`` painted on the right of the midline x =
    ``midline_x``, ``left`` (painted as a right hip on the same grid) mirrored onto the left."""

    image: np.ndarray
    geometry: VolumeGeometry
    right: Phantom
    left: Phantom
    midline_x: float

    def left_seeds_ras(self, s_mm) -> np.ndarray:
        """Points on the left nerve at arc lengths ``s_mm`` along it."""
        return self.left.seeds_ras(s_mm) * np.array([-1.0, 1.0, 1.0]) + np.array([2.0 * self.midline_x, 0.0, 0.0])


def pressed_and_healthy_hips(modality: str, spacing_ijk) -> TwoHips:
    """Both hips: on the right a nerve 5 mm in radius in a 270 deg sleeve of HO 30 mm long;
    on the left (the right's anatomy mirrored, with no HO) a nerve 4 mm in radius lying
    6 mm more anterior. The right nerve's area over the left's is (5/4)^2."""
    base = make_shell_spec(270.0, gap_mm=0.0, length_mm=30.0, radius_mm=5.0, include_native_bone=True)
    right_spec = centred_on_the_midline(base)
    left_spec = centred_on_the_midline(dataclasses.replace(
        base, islands=(), nerve_semi_axes=(4.0, 4.0),
        nerve_control_points=tuple((p[0], p[1] + 6.0, p[2]) for p in base.nerve_control_points)))
    midline_x = right_spec.center_ras[0]
    right, left = (generate_phantom(spec, modality=modality, spacing_ijk=spacing_ijk, fov_mm=(230.0, 130.0, 120.0))
                   for spec in (right_spec, left_spec))
    columns = right.image.shape[2]
    columns_x = right.geometry.kji_to_ras_points(
        np.stack([np.zeros(columns), np.zeros(columns), np.arange(columns)], axis=1))[:, 0]
    image = np.where((columns_x >= midline_x)[None, None, :], right.image, left.image[:, :, ::-1])
    return TwoHips(image, right.geometry, right, left, midline_x)


def write_markups_points_json(path: Path, points_ras, name: str, curve: bool = False) -> None:
    """Write points as a Slicer markups JSON file (coordinates in LPS, as Slicer writes)."""
    control_points = [
        {"id": str(n + 1), "label": f"{name}-{n + 1}", "position": [float(-p[0]), float(-p[1]), float(p[2])],
         "positionStatus": "defined"}
        for n, p in enumerate(np.asarray(points_ras, float))
    ]
    document = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
        "markups": [{"type": "Curve" if curve else "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm",
                     "name": name, "controlPoints": control_points}],
    }
    Path(path).write_text(json.dumps(document, indent=2))


def write_named_label_map(path, labels: np.ndarray, geometry: VolumeGeometry, names: dict) -> None:
    """Write a NIfTI-1 label map (``.nii`` or ``.nii.gz``) whose header extension holds
    the label table (value -> name), as whole-body segmentation tools write theirs."""
    import gzip
    import struct
    import tempfile

    from .bonelabels import NIFTI1_HEADER_BYTES
    from .imageio import write_volume

    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / "labels.nii"
        write_volume(plain, labels, geometry, compress=False)
        data = plain.read_bytes()
    voxel_offset = int(struct.unpack("<f", data[108:112])[0])
    entries = "".join(f'<Label Key="{value}" Red="1" Green="1" Blue="1" Alpha="1"><![CDATA[{name}]]></Label>\n'
                      for value, name in names.items())
    table = ('<?xml version="1.0" encoding="UTF-8"?><CaretExtension><VolumeInformation Index="0"><LabelTable>\n'
             f"{entries}</LabelTable></VolumeInformation></CaretExtension>").encode()
    table += b" " * (-(len(table) + 8) % 16)  # an extension's size is a multiple of 16 bytes
    extension = struct.pack("<ii", len(table) + 8, 0) + table
    header = bytearray(data[:NIFTI1_HEADER_BYTES])
    # The header, the 4-byte extension flag, then the extension.
    header[108:112] = struct.pack("<f", float(NIFTI1_HEADER_BYTES + 4 + len(extension)))
    content = bytes(header) + b"\x01\x00\x00\x00" + extension + data[voxel_offset:]
    Path(path).write_bytes(gzip.compress(content) if str(path).endswith(".gz") else content)


def write_phantom_case(phantom: Phantom, folder, name: str = "ct") -> dict:
    """Write image, truth labels, seeds and truth JSON into ``folder``; return the paths."""
    from .imageio import write_volume  # local import: writing needs SimpleITK only here

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_path = folder / f"{name}.nrrd"
    dtype = np.int16 if phantom.modality == "ct" else np.float32
    write_volume(image_path, np.round(phantom.image).astype(dtype) if dtype == np.int16 else phantom.image, phantom.geometry)
    truth_labels = phantom.ho_labels.astype(np.uint8).copy()
    truth_labels[phantom.nerve_mask] = 100
    write_volume(folder / f"{name}_truth_labels.nrrd", truth_labels, phantom.geometry)
    s = phantom.centreline_s_mm
    margin_voxels = 5.0 / min(phantom.geometry.spacing_ijk)
    visible = s[phantom.geometry.contains_ras(phantom.centreline_ras, margin_voxels)]
    seeds = phantom.seeds_ras([visible[0] + 3.0, 0.5 * (visible[0] + visible[-1]), visible[-1] - 3.0])
    seeds_path = folder / "nerve_seeds_right.mrk.json"
    write_markups_points_json(seeds_path, seeds, "Sciatic nerve right seeds")
    truth = {
        "modality": phantom.modality,
        "labels": {"ho": "1..n (spec order)", "nerve": 100},
        "islands": phantom.islands,
        "nerve": {
            "side": "right",
            "length_mm": float(s[-1]),
            "centreline_ras": np.round(phantom.centreline_ras[::4], 3).tolist(),
            "equivalent_diameter_mm": np.round(phantom.true_equivalent_diameter_mm[::4], 3).tolist(),
        },
        "spec": dataclasses.asdict(phantom.spec),
    }
    truth_path = folder / f"{name}_truth.json"
    truth_path.write_text(json.dumps(truth, indent=1))
    return {"image": image_path, "seeds": seeds_path, "truth": truth_path}


def write_dicom_slices(folder, planes, positions_lps, row_lps, column_lps, pixel_mm,
                       series_number: int = 2, series_description: str | None = None,
                       tags: dict | None = None, first_instance: int = 1) -> None:
    """One CT slice file per plane (rows j, columns i) with the given header positions
    and orientation (LPS, as a scanner writes them); ``pixel_mm`` is (along i, along j).
    ``series_number`` makes the series' UID, so several series can share a folder;
    ``tags`` ({"gggg|eeee": value}) adds to or replaces the header's (an MR's modality,
    echo time...); ``first_instance`` numbers the first slice, so that a series can be
    written in parts (the echoes of a multi-echo series)."""
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    orientation = "\\".join(f"{v:.6f}" for v in (*row_lps, *column_lps))
    for k, (plane, position) in enumerate(zip(planes, positions_lps)):
        slice_image = sitk.GetImageFromArray(np.ascontiguousarray(plane[None]))[:, :, 0]
        slice_image.SetSpacing(tuple(float(v) for v in pixel_mm))
        header = {
            "0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": f"1.2.826.0.1.3680043.2.1125.{series_number}", "0020|0013": str(k + first_instance),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position), "0020|0037": orientation,
            "0028|0030": f"{pixel_mm[1]:.6f}\\{pixel_mm[0]:.6f}", "0028|1052": "0", "0028|1053": "1",
        }
        if series_description is not None:
            header["0008|103e"] = series_description
        for tag, value in {**header, **(tags or {})}.items():
            slice_image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"series{series_number}_slice{k + first_instance - 1:04d}.dcm"))
        writer.Execute(slice_image)


def write_tilted_dicom_series(phantom: Phantom, folder, tilt_deg: float, table_step_mm: float = 2.0,
                              pixel_mm: float = 1.0) -> None:
    """The phantom as a scanner with its gantry tilted by ``tilt_deg`` about L would
    slice it: each slice leans towards S while the table moves along S, covering the
    whole phantom (beyond it the nearest value continues)."""
    tilt = np.radians(tilt_deg)
    row, column = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(tilt), np.sin(tilt)])
    last = np.subtract(phantom.image.shape, 1)
    corners = np.array([[a, b, c] for a in (0, last[0]) for b in (0, last[1]) for c in (0, last[2])])
    lps = phantom.geometry.kji_to_ras_points(corners) * [-1, -1, 1]
    low, high = lps.min(axis=0), lps.max(axis=0)
    columns = int(np.ceil((high[0] - low[0]) / pixel_mm)) + 1
    rows = int(np.ceil((high[1] - low[1]) / (pixel_mm * np.cos(tilt)))) + 1
    first_s = low[2] - rows * pixel_mm * np.sin(tilt)
    count = int(np.ceil((high[2] - first_s) / table_step_mm)) + 1
    positions = np.array([(low[0], low[1], first_s + k * table_step_mm) for k in range(count)])
    j, i = np.mgrid[0:rows, 0:columns].astype(float)
    in_plane = i[..., None] * pixel_mm * row + j[..., None] * pixel_mm * column
    planes = []
    for position in positions:
        ras = (position + in_plane).reshape(-1, 3) * [-1, -1, 1]
        kji = phantom.geometry.ras_to_kji_points(ras).T
        values = ndimage.map_coordinates(phantom.image, kji, order=1, mode="nearest")
        planes.append(np.rint(values).astype(np.int16).reshape(rows, columns))
    write_dicom_slices(folder, planes, positions, row, column, (pixel_mm, pixel_mm))
