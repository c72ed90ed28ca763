"""Property-based geometry checks: random HO shells around random nerve paths, random grid
rotations. Tolerances are those of the contact tests: encasement within 15 deg of
theta + 4 asin(tau / 2r), contact length within 2 mm of L + 2 tau, gap within 0.5 mm.
"""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from HOSciaticModuleLib.contact import compute_contact
from HOSciaticModuleLib.phantom import generate_phantom, make_shell_spec

TAU = 1.0
SETTINGS = settings(max_examples=10, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _random_grid(angles):
    return dict(spacing_ijk=(0.6, 0.6, 0.6), fov_mm=(46.0, 46.0, 100.0),
                directions_ras=Rotation.from_euler("xyz", angles, degrees=True).as_matrix())


angles = st.tuples(*(st.floats(-180.0, 180.0) for _ in range(3)))


@SETTINGS
@given(theta=st.floats(60.0, 330.0), centre=st.floats(-180.0, 180.0), length=st.floats(15.0, 35.0),
       radius=st.floats(4.0, 6.0), straight=st.booleans(), rotation=angles)
def test_touching_shell(theta, centre, length, radius, straight, rotation):
    spec = make_shell_spec(theta, length_mm=length, sector_center_deg=centre, radius_mm=radius, straight=straight)
    phantom = generate_phantom(spec, **_random_grid(rotation))
    result = compute_contact(phantom.nerve_mask, phantom.ho_labels, phantom.geometry, phantom.centreline_ras,
                             tolerance_mm=TAU)
    expected = min(theta + 4.0 * np.degrees(np.arcsin(TAU / (2.0 * radius))), 360.0)
    assert abs(result.max_encasement_deg - expected) <= 15.0
    assert abs(result.contact_length_mm - (length + 2 * TAU)) <= 2.0
    assert result.min_distance_mm == 0.0


@SETTINGS
@given(gap=st.floats(2.0, 6.0), theta=st.floats(90.0, 300.0), centre=st.floats(-180.0, 180.0),
       straight=st.booleans(), rotation=angles)
def test_shell_with_gap(gap, theta, centre, straight, rotation):
    spec = make_shell_spec(theta, gap_mm=gap, length_mm=25.0, sector_center_deg=centre, radius_mm=5.0,
                           straight=straight)
    phantom = generate_phantom(spec, **_random_grid(rotation))
    result = compute_contact(phantom.nerve_mask, phantom.ho_labels, phantom.geometry, phantom.centreline_ras,
                             tolerance_mm=TAU)
    assert abs(result.min_distance_mm - gap) <= 0.5
    assert result.encasement_class == "none" and result.contact_length_mm == 0.0
