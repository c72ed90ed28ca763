"""Draw the figure that defines the encasement angle (Resources/Figures/encasement_definition.png).

    .venv/bin/python Resources/Figures/make_encasement_figure.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Circle, Wedge  # noqa: E402

RADIUS_MM = 5.0
TOLERANCE_MM = 1.0
SHELL_DEG = 200.0
SHELL_THICKNESS_MM = 4.0


def main() -> None:
    gain_deg = np.degrees(2.0 * np.arcsin(TOLERANCE_MM / (2.0 * RADIUS_MM)))
    figure, axes = plt.subplots(figsize=(6.4, 6.0))
    start, stop = 90.0 - SHELL_DEG / 2.0, 90.0 + SHELL_DEG / 2.0
    axes.add_patch(Wedge((0, 0), RADIUS_MM + SHELL_THICKNESS_MM, start, stop, width=SHELL_THICKNESS_MM,
                         color="#f1d691", ec="#a08040", label=f"HO shell covering θ = {SHELL_DEG:.0f}°"))
    axes.add_patch(Wedge((0, 0), RADIUS_MM + 0.08, start - gain_deg, stop + gain_deg, width=0.5, color="#d62728",
                         label=f"nerve boundary within τ = {TOLERANCE_MM:g} mm of HO"))
    axes.add_patch(Circle((0, 0), RADIUS_MM, color="#e8d926", alpha=0.55, label=f"nerve cross-section, r = {RADIUS_MM:g} mm"))
    axes.plot([0], [0], "k+", ms=12)
    for angle in (start - gain_deg, stop + gain_deg):
        a = np.radians(angle)
        axes.plot([0, 1.35 * RADIUS_MM * np.cos(a)], [0, 1.35 * RADIUS_MM * np.sin(a)], "k--", lw=0.8)
    total = SHELL_DEG + 2.0 * gain_deg
    axes.text(0, -0.8, "centroid", ha="center", fontsize=9)
    axes.set_title(f"Encasement = angle around the centroid covered by nerve boundary in contact\n"
                   f"≈ θ + 4·asin(τ / 2r) = {SHELL_DEG:.0f}° + {2 * gain_deg:.1f}° = {total:.1f}°", fontsize=10)
    axes.set_xlim(-11, 11)
    axes.set_ylim(-11, 11)
    axes.set_aspect("equal")
    axes.set_xlabel("mm")
    axes.legend(loc="lower center", fontsize=8, frameon=False)
    figure.tight_layout()
    figure.savefig(Path(__file__).with_name("encasement_definition.png"), dpi=110)


if __name__ == "__main__":
    main()
