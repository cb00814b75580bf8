"""The geometry of one face: every curve that is drawn, in canonical normalized
coordinates, with the 68 landmarks sampled from those same curves; the AUs
displace it the way their muscles do."""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from components.synthetic.identities import SubjectParams


_BEZIER_WEIGHTS: Dict[int, np.ndarray] = {}
_UNIT_CIRCLES: Dict[int, np.ndarray] = {}


def _bezier(p0, p1, p2, n=12) -> np.ndarray:
    """n points of the quadratic Bezier curve p0 -> p2 with control p1."""
    w = _BEZIER_WEIGHTS.get(n)
    if w is None:
        t = np.linspace(0.0, 1.0, n)
        w = _BEZIER_WEIGHTS[n] = np.stack([(1 - t) ** 2, 2 * (1 - t) * t, t ** 2], axis=1)
    return w @ np.array([p0, p1, p2], np.float64).reshape(3, 2)


def _ellipse(cx, cy, rx, ry, n=24) -> np.ndarray:
    """n-gon approximating an axis-aligned ellipse."""
    c = _UNIT_CIRCLES.get(n)
    if c is None:
        t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        c = _UNIT_CIRCLES[n] = np.stack([np.cos(t), np.sin(t)], axis=1)
    return c * (rx, ry) + (cx, cy)


def _grid_with(n: int, lo: float, hi: float, required) -> Tuple[np.ndarray, List[int]]:
    """``linspace(lo, hi, n)`` merged with ``required`` values, and their indices."""
    grid = np.unique(np.round(np.concatenate([np.linspace(lo, hi, n), required]), 9))
    return grid, [int(np.argmin(np.abs(grid - r))) for r in required]


# Dense curve parameters that contain the landmark positions.
_EYE_U = np.linspace(-1.0, 1.0, 19)  # holds -1, -1/3, 1/3, 1
_EYE_LM = {u: int(round((u + 1) * 9)) for u in (-1, -1 / 3, 1 / 3, 1)}
_BROW_U = np.linspace(-1.0, 1.0, 9)  # holds -1, -0.5, 0, 0.5, 1 at 0, 2, 4, 6, 8
_JAW_PHI = np.linspace(0.0, np.pi, 41)
_JAW_LANDMARK_PHI = np.linspace(0.0, np.pi, 17)
_ARC_T = np.linspace(0.0, np.pi, 31)
_UPPER_OUTER_LM = (-1.0, -0.62, -0.25, 0.0, 0.25, 0.62, 1.0)  # 48-54
_LOWER_OUTER_LM = (0.62, 0.28, 0.0, -0.28, -0.62)  # 55-59
_MOUTH_U, _MOUTH_LM = _grid_with(21, -1.0, 1.0, _UPPER_OUTER_LM + _LOWER_OUTER_LM)
_UPPER_OUTER_IDX, _LOWER_OUTER_IDX = _MOUTH_LM[:7], _MOUTH_LM[7:]
_INNER_U = np.linspace(-0.9, 0.9, 21)  # 60 at 0, 61-63 at 5, 10, 15, 64 at 20
_UPPER_INNER_IDX = [0, 5, 10, 15, 20]  # 60-64
_LOWER_INNER_IDX = [15, 10, 5]  # 65-67
_HAIRLINE_U = np.linspace(-1.0, 1.0, 21)


class _FaceGeometry:
    """Everything drawn for one face, in canonical normalized coordinates.

    ``landmarks`` (68, 2) are sampled from the same curves that are drawn.
    Side index 0 is image left (the subject's right), 1 is image right.
    """

    def __init__(self, p: SubjectParams, au: Dict[int, float], right_only=(),
                 gaze=(0.0, 0.0), yaw: float = 0.0):
        self.p, self.au = p, au
        s = p.face_half_width / 0.30  # movement scale
        self.s = s
        cx, ey = 0.5, p.eye_line_y
        self.cx = cx
        right_only = set(int(a) for a in right_only)

        def side_au(n):
            return (au[n], 0.0) if n in right_only else (au[n], au[n])

        self.side_au = side_au
        lm = np.zeros((68, 2))

        # jaw / head outline; phi: 0 image left at the eye line, pi/2 chin, pi image right
        a, H = p.face_half_width, p.face_lower_height
        jaw_drop = 0.05 * s * au[26]
        chin_raise = 0.010 * s * au[17]
        phi = np.concatenate([_JAW_PHI, _JAW_LANDMARK_PHI])
        sn, cs = np.sin(phi), np.cos(phi)
        jaw = np.stack([cx - a * cs * (1.0 - p.jaw_taper * sn ** 2),
                        ey + 0.01 + H * sn ** p.jaw_squareness + jaw_drop * sn ** 3
                        - chin_raise * sn ** 12], axis=1)
        self.jaw, lm[0:17] = jaw[:len(_JAW_PHI)], jaw[len(_JAW_PHI):]
        t = _ARC_T
        top = np.stack([cx + 1.02 * a * np.cos(t),
                        ey + 0.01 - p.forehead_height * np.sin(t) ** 0.8], axis=1)
        self.head = np.concatenate([self.jaw, top[1:-1]], axis=0)

        # eyes: u = -1 outer corner, +1 inner corner
        eu = p.eye_upper_height * max(0.12, 1 + 1.1 * au[5] - 0.4 * au[7] - 0.35 * au[6]
                                      - 0.12 * au[4] - 0.12 * au[9])
        el = p.eye_lower_height * max(0.12, 1 - 0.6 * au[6] - 0.55 * au[7])
        lower_flat = 0.9 - 0.5 * au[7]  # AU7 straightens the lower lid
        ew = p.eye_half_width
        u = _EYE_U
        upper_shape = (1 - u ** 2) ** 0.7 * (1 + 0.08 * u)
        lower_shape = (1 - u ** 2) ** lower_flat
        self.eyes = []
        for k, sign in enumerate((-1.0, 1.0)):
            ex = cx + sign * p.eye_half_spacing + yaw * 0.025
            eyy = ey + (p.asymmetry if k == 0 else -p.asymmetry)
            x = ex - sign * u * ew
            base = eyy + p.eye_tilt * u * ew * 0.5
            upper = np.stack([x, base - eu * upper_shape], axis=1)
            lower = np.stack([x, base + el * lower_shape], axis=1)
            iris_r = p.iris_ratio * ew
            iris_c = (ex + (gaze[0] - yaw * 0.3) * 0.3 * ew, eyy + 0.15 * eu + gaze[1] * 0.15 * eu)
            e = _EYE_LM
            self.eyes.append(dict(upper=upper, lower=lower, iris=iris_c, iris_r=iris_r,
                                  outer=upper[e[-1]], inner=upper[e[1]], center=(ex, eyy),
                                  sign=sign))
            if k == 0:  # 36 outer, 37-38 upper, 39 inner, 40-41 lower
                lm[36:40] = upper[[e[-1], e[-1 / 3], e[1 / 3], e[1]]]
                lm[40:42] = lower[[e[1 / 3], e[-1 / 3]]]
            else:  # 42 inner, 43-44 upper, 45 outer, 46-47 lower
                lm[42:46] = upper[[e[1], e[1 / 3], e[-1 / 3], e[-1]]]
                lm[46:48] = lower[[e[-1 / 3], e[1 / 3]]]

        # brows: u = -1 outer, +1 inner; landmarks on the upper edge
        u = _BROW_U
        w_in = ((u + 1) / 2) ** 1.5
        w_out = ((1 - u) / 2) ** 1.2
        brow_dy = s * (-0.065 * au[1] * w_in - 0.06 * au[2] * w_out - 0.015 * au[2] * (1 - u ** 2)
                       + 0.035 * au[4] * (0.4 + 0.6 * w_in) + 0.012 * au[9] * w_in)
        brow_dx = s * (0.028 * au[4] * w_in + 0.006 * au[9] * w_in)
        shape_y = -p.brow_arch * (1 - u ** 2) + p.brow_tilt * (1 - u) / 2 + brow_dy
        thick = p.brow_thickness * (0.55 + 0.45 * (u + 1) / 2)
        self.brows = []
        for k, sign in enumerate((-1.0, 1.0)):
            ex = cx + sign * p.eye_half_spacing + yaw * 0.02
            base_y = ey - p.brow_gap + (p.asymmetry if k == 0 else -p.asymmetry) * 1.5
            top_edge = np.stack([ex - sign * (u * p.brow_half_length - 0.1 * ew + brow_dx),
                                 base_y + shape_y], axis=1)
            bottom = top_edge + np.stack([np.zeros_like(u), thick], axis=1)
            self.brows.append(np.concatenate([top_edge, bottom[::-1]], axis=0))
            if k == 0:
                lm[17:22] = top_edge[0::2]  # outer -> inner
            else:
                lm[22:27] = top_edge[8::-2]  # inner -> outer
        self.brow_inner_y = min(lm[21, 1], lm[22, 1])

        # nose: 27-30 bridge to tip, 31-35 base left -> right
        nyaw = yaw * 0.045
        tip_y = ey + p.nose_length - 0.004 * s * au[9]
        top_y = ey - 0.004
        f = np.array([0.0, 1 / 3, 2 / 3, 1.0])
        lm[27:31, 0] = cx + nyaw * f ** 1.5
        lm[27:31, 1] = top_y + (tip_y - top_y) * f
        nw = p.nose_half_width * (1 + 0.12 * au[9] + 0.06 * au[10])
        lift = s * (0.018 * au[9] + 0.008 * au[10])
        base_x = cx + nyaw * 0.7
        lm[31:36, 0] = base_x + nw * np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
        lm[31:36, 1] = tip_y + np.array([0.010, 0.019, 0.021, 0.019, 0.010]) \
            - lift * np.array([1.0, 1.0, 0.8, 1.0, 1.0])
        self.nose_tip = lm[30].copy()

        # mouth; u in [-1, 1], negative side = image left
        my = ey + p.mouth_offset
        mx = cx + yaw * 0.03
        a12, a14 = side_au(12), side_au(14)
        mw = p.mouth_half_width
        widths, corners = [], []
        for k in range(2):
            widths.append(mw * (1 + 0.2 * a12[k] + 0.25 * au[20] - 0.10 * a14[k]
                                - 0.15 * au[23] - 0.08 * au[24]))
            corners.append(my + p.mouth_rest_curve
                           + s * (-0.042 * a12[k] - 0.008 * a14[k] + 0.038 * au[15]
                                  + 0.01 * au[20] - 0.003 * au[10]))
        gap = s * au[25] * (0.02 + 0.09 * au[26])
        corners = [c + 0.2 * gap for c in corners]
        center_y = my - s * (0.012 * au[17] + 0.003 * au[10])
        tighten = 0.3 * max(a12) + 0.25 * au[20] + 0.45 * au[23] + 0.55 * au[24]
        tu = p.upper_lip * max(0.25, 1 - tighten)
        tl = p.lower_lip * max(0.25, 1 - tighten + 0.1 * au[17])

        def mouth_x(u):
            return mx + u * np.where(u < 0, widths[0], widths[1])

        def lip_line(u):
            corner = np.where(u < 0, corners[0], corners[1])
            return center_y + (corner - center_y) * u ** 2

        def opening(u):
            return gap * np.clip(1 - (u / 0.9) ** 2, 0, 1) ** 0.6

        u = _MOUTH_U
        x, line, o = mouth_x(u), lip_line(u), opening(u)
        flat = np.clip(1 - u ** 2, 0, 1)
        bow = flat ** 0.5 * (1 - 0.18 * np.exp(-(u / 0.12) ** 2))
        upper_outer = np.stack([x, line - 0.25 * o - tu * bow - s * 0.018 * au[10] * flat], axis=1)
        lower_outer = np.stack([x, line + 0.75 * o + tl * flat ** 0.6], axis=1)
        u = _INNER_U
        x, line, o = mouth_x(u), lip_line(u), opening(u)
        upper_inner = np.stack([x, line - 0.25 * o], axis=1)
        lower_inner = np.stack([x, line + 0.75 * o], axis=1)
        self.upper_lip = np.concatenate([upper_outer, upper_inner[::-1]], axis=0)
        self.lower_lip = np.concatenate([lower_outer, lower_inner[::-1]], axis=0)
        self.mouth_open = np.concatenate([upper_inner, lower_inner[::-1]], axis=0)
        self.lip_line = np.stack([mouth_x(_MOUTH_U), lip_line(_MOUTH_U)], axis=1)
        self.upper_inner, self.lower_inner = upper_inner, lower_inner
        self.gap = gap
        lm[48:55] = upper_outer[_UPPER_OUTER_IDX]
        lm[55:60] = lower_outer[_LOWER_OUTER_IDX]
        lm[60:65] = upper_inner[_UPPER_INNER_IDX]
        lm[65:68] = lower_inner[_LOWER_INNER_IDX]
        self.landmarks = lm
