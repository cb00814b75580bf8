"""Rasterising a face: a supersampled Pillow canvas behind a 2x3 affine, and
the painter that draws a :class:`~components.synthetic.geometry._FaceGeometry`
(hair, skin, creases, eyes, brows, nose, mouth)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from components.synthetic.geometry import (_ARC_T, _HAIRLINE_U, _FaceGeometry, _bezier,
                                           _ellipse)


class _Canvas:
    """Pillow drawing in normalized coordinates through a 2x3 affine (canonical ->
    output), supersampled ``supersample`` times.

    Drawing calls are recorded and rasterised by :meth:`flush` (one matrix
    product for all points); :meth:`set_affine` flushes first.
    """

    def __init__(self, size: int, supersample: int, background: float):
        self.side = size * supersample
        self.supersample = supersample
        self.image = Image.new("L", (self.side, self.side), _gray(background))
        self.matrix = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        self.commands: list = []
        self._target = self.commands

    def set_affine(self, matrix: np.ndarray) -> None:
        self.flush()
        self.matrix = np.asarray(matrix, np.float64)

    def polygon(self, pts, fill) -> None:
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        self._target.append(("polygon", pts, _gray(fill), 0.0))

    def line(self, pts, width: float, fill) -> None:
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        self._target.append(("line", pts, _gray(fill), width))

    def ellipse(self, cx, cy, rx, ry, fill, n=24) -> None:
        self.polygon(_ellipse(cx, cy, rx, ry, n), fill)

    def clipped(self, clip_pts, paint) -> None:
        """Record ``paint(canvas)``'s drawing, restricted to polygon ``clip_pts``."""
        outer, sub = self._target, []
        self._target = sub
        try:
            paint(self)
        finally:
            self._target = outer
        outer.append(("clip", np.asarray(clip_pts, np.float64).reshape(-1, 2), sub, 0.0))

    def flush(self) -> None:
        """Rasterise the recorded commands."""
        if not self.commands:
            return
        arrays = list(_flatten(self.commands))
        m = self.matrix
        # Pillow's polygon fill treats pixel i as [i, i+1): no half-pixel shift
        pixels = (np.concatenate(arrays, axis=0) @ m[:, :2].T + m[:, 2]) * self.side
        scale = math.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])) * self.side
        position = [0]

        def take(n):
            start = position[0]
            position[0] += n
            return pixels[start:start + n]

        def run(commands, draw, offset):
            for kind, pts, arg, width in commands:
                px = take(len(pts))
                if kind == "polygon":
                    draw.polygon((px - offset).ravel().tolist(), fill=arg)
                elif kind == "line":
                    w = max(1, int(round(width * scale)))
                    draw.line((px - offset).ravel().tolist(), fill=arg, width=w,
                              joint="curve" if w > 2 else None)
                else:
                    lo = np.maximum(np.floor(px.min(axis=0)).astype(int) - 1, 0)
                    hi = np.minimum(np.ceil(px.max(axis=0)).astype(int) + 2, self.side)
                    if (hi <= lo).any():  # outside the image
                        take(sum(len(q) for q in _flatten(arg)))
                        continue
                    box = (int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
                    mask = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)
                    ImageDraw.Draw(mask).polygon((px - lo).ravel().tolist(), fill=255)
                    crop = self.image.crop(box)
                    run(arg, ImageDraw.Draw(crop), lo)
                    self.image.paste(crop, box, mask)

        run(self.commands, ImageDraw.Draw(self.image), np.zeros(2))
        self.commands.clear()


def _flatten(commands):
    """Point arrays of nested recorded commands, in recording order."""
    for kind, pts, arg, _ in commands:
        yield pts
        if kind == "clip":
            yield from _flatten(arg)


def _gray(value) -> int:
    return int(round(min(255.0, max(0.0, float(value)))))


def _shade(tone: float, amount: float) -> float:
    """``tone`` darkened by ``amount`` in [0, 1]."""
    return tone * (1.0 - min(1.0, max(0.0, amount)))


def _draw_face(canvas: _Canvas, g: _FaceGeometry) -> None:
    p, au, s, cx = g.p, g.au, g.s, g.cx
    skin = p.skin_tone
    lm = g.landmarks
    depth = p.crease_depth
    a, ey = p.face_half_width, p.eye_line_y
    head_center = np.array([cx, ey + 0.05])

    def crease(pts, width, amount):
        """Skin line darkened by ``amount`` (x1.3), 1.75x wider; skipped when invisible."""
        if amount > 0.01:
            canvas.line(pts, 1.75 * width, _shade(skin, 1.3 * amount))

    # hair behind the head, neck, shoulders, ears
    top_y = ey + 0.01
    if p.hair_long:
        ry = p.forehead_height + p.hair_volume
        back = np.stack([cx + (1.1 * a + p.hair_volume) * np.cos(_ARC_T),
                         top_y - ry * np.sin(_ARC_T) ** 0.8], axis=1)
        shoulders = [[cx - 1.12 * a, ey + 0.32], [cx + 1.12 * a, ey + 0.32]]
        back = np.concatenate([back, shoulders], axis=0)
        canvas.polygon(back, p.hair_tone * 0.85)
    chin_y = ey + 0.01 + p.face_lower_height  # at rest: the neck does not move with the jaw
    canvas.polygon([[cx - 0.45 * a, ey + 0.2], [cx + 0.45 * a, ey + 0.2],
                    [cx + 0.5 * a, chin_y + 0.2], [cx - 0.5 * a, chin_y + 0.2]], skin * 0.72)
    canvas.polygon([[cx - 0.55 * a, chin_y + 0.07], [cx + 0.55 * a, chin_y + 0.07],
                    [cx + 2.0 * a, chin_y + 0.22], [cx + 2.0 * a, 1.5], [cx - 2.0 * a, 1.5],
                    [cx - 2.0 * a, chin_y + 0.22]], p.clothing_tone)
    for sign in (-1.0, 1.0):
        ear_x = cx + sign * (a * 0.98)
        canvas.ellipse(ear_x, ey + 0.045, 0.028 * p.ear_size, 0.055 * p.ear_size, skin * 0.85, 16)
        canvas.ellipse(ear_x + sign * 0.006, ey + 0.045, 0.012 * p.ear_size, 0.035 * p.ear_size,
                       skin * 0.7, 12)

    # face with a little edge shading
    for shrink, tone in ((1.0, 0.80), (0.95, 0.90), (0.88, 0.97), (0.78, 1.0)):
        canvas.polygon(head_center + (g.head - head_center) * shrink, skin * tone)

    # hair in front: cap above the hairline, temples down to the side of the head
    peak = (_HAIRLINE_U - p.hair_part) / (1 + abs(p.hair_part))
    hairline = np.stack([cx + _HAIRLINE_U * 0.9 * a,
                         ey - p.hairline_height * (1 - 0.5 * p.hairline_curve * peak ** 2)
                         * (1 - 0.4 * _HAIRLINE_U ** 4)], axis=1)
    rx, ry = 1.05 * a + p.hair_volume, p.forehead_height + p.hair_volume
    temple_y = ey - 0.03
    t0 = math.asin(min(1.0, ((top_y - temple_y) / ry) ** 1.25))
    t = t0 + (np.pi - 2 * t0) * _ARC_T / np.pi
    cap = np.stack([cx + rx * np.cos(t), top_y - ry * np.sin(t) ** 0.8], axis=1)
    canvas.polygon(np.concatenate([cap, [[cx - 1.04 * a, temple_y]], hairline,
                                   [[cx + 1.04 * a, temple_y]]], axis=0), p.hair_tone)

    if p.beard > 0:  # jaw below the mouth corners and the upper lip
        upper = [lm[48] + (-0.012, 0.0), lm[33] + (-0.03, 0.01), lm[33] + (0.03, 0.01),
                 lm[54] + (0.012, 0.0)]
        canvas.polygon(np.concatenate([g.jaw[10:31], upper[::-1]], axis=0),
                       _shade(skin, p.beard))

    # cheeks: AU6 raises and lights them; infraorbital furrow for AU6/AU7
    for eye in g.eyes:
        ex, eyy = eye["center"]
        bulge = au[6]
        if bulge > 0.02:
            canvas.ellipse(ex + eye["sign"] * 0.01, eyy + 0.07 - 0.02 * s * bulge, 0.055, 0.035,
                           min(255.0, skin * (1.0 + 0.08 * bulge)), 20)
        furrow = eye["lower"][3:-3] + [0.0, 0.012 + 0.004 * (1 - bulge)]
        crease(furrow, 0.004, depth * (0.06 + 0.3 * bulge + 0.25 * au[7]))

    # nasolabial folds (AU12, AU10, AU9, AU6), marionette lines (AU15), dimples (AU14)
    a12, a14 = g.side_au(12), g.side_au(14)
    for k, sign in enumerate((-1.0, 1.0)):
        wing = lm[31] if k == 0 else lm[35]
        corner = lm[48] if k == 0 else lm[54]
        start = wing + (sign * 0.012, -0.006)
        end = corner + (sign * 0.02, 0.012)
        ctrl = (start + end) / 2 + (sign * 0.02, 0.0)
        fold = depth * (0.12 + 0.55 * a12[k] + 0.5 * au[10] + 0.3 * au[9] + 0.2 * au[6])
        crease(_bezier(start, ctrl, end), 0.005, 0.45 * fold)
        if au[15] > 0.02:
            crease([corner + (sign * 0.006, 0.006), corner + (sign * 0.012, 0.04)], 0.004,
                   0.35 * depth * au[15])
        if a14[k] > 0.02:
            crease(_bezier(corner + (sign * 0.008, -0.01), corner + (sign * 0.016, 0.0),
                           corner + (sign * 0.008, 0.01), 6), 0.005, 0.5 * depth * a14[k])

    # forehead lines: centre for AU1, sides for AU2
    brow_top = min(lm[17:27, 1])
    hair_y = ey - p.hairline_height
    for row in range(3):
        y = brow_top - 0.018 * (row + 1) * s
        if y < hair_y + 0.015:
            break
        crease(_bezier((cx - 0.06, y + 0.003), (cx, y - 0.004), (cx + 0.06, y + 0.003), 8),
               0.004, 0.45 * depth * au[1])
        for sign in (-1.0, 1.0):
            crease(_bezier((cx + sign * 0.06, y + 0.003), (cx + sign * 0.1, y - 0.002),
                           (cx + sign * 0.14, y + 0.008), 8), 0.004, 0.45 * depth * au[2])
    # glabellar furrows (AU4) and nose wrinkles (AU9)
    for sign in (-1.0, 1.0):
        x = cx + sign * 0.012
        crease([(x, g.brow_inner_y - 0.012), (x + sign * 0.002, ey - 0.008)], 0.004,
               0.5 * depth * au[4])
    for i in range(3):
        y = lm[27, 1] + (lm[29, 1] - lm[27, 1]) * (0.2 + 0.3 * i)
        crease(_bezier((cx - 0.025, y + 0.004), (cx, y - 0.004), (cx + 0.025, y + 0.004), 6),
               0.004, 0.55 * depth * au[9])

    # eyes: sclera, iris and pupil clipped to the lids, lash line, crease, crow's feet
    for eye in g.eyes:  # orbital shadow
        ex, eyy = eye["center"]
        canvas.ellipse(ex, eyy - 0.004, 1.45 * p.eye_half_width, 2.2 * p.eye_upper_height,
                       skin * 0.9, 20)
    for eye in g.eyes:
        outline = np.concatenate([eye["upper"], eye["lower"][::-1][1:-1]], axis=0)
        canvas.polygon(outline, p.sclera_tone)

        def paint_iris(c, eye=eye):
            ix, iy = eye["iris"]
            r = eye["iris_r"]
            c.ellipse(ix, iy, r, r, p.iris_tone, 20)
            c.ellipse(ix, iy, 0.45 * r, 0.45 * r, p.iris_tone * 0.35, 12)
            c.ellipse(ix + 0.3 * r, iy - 0.3 * r, 0.18 * r, 0.18 * r, 235, 8)

        canvas.clipped(outline, paint_iris)
        canvas.line(eye["upper"], 0.009, min(p.iris_tone, skin * 0.35))
        canvas.line(eye["lower"][2:-2], 0.003, skin * 0.7)
        crease(eye["upper"][2:-2] + (0.0, -0.012 - 0.004 * au[5]), 0.003, 0.25 * (1 - 0.6 * au[5]))
        if au[6] > 0.02:
            ox, oy = eye["outer"]
            sign = eye["sign"]
            for dy in (-0.012, 0.0, 0.012):
                crease([(ox + sign * 0.008, oy + dy * 0.5), (ox + sign * 0.026, oy + dy * 1.4)],
                       0.003, 0.5 * depth * au[6])

    # brows
    for brow in g.brows:
        canvas.polygon(brow, p.brow_tone)
    if p.glasses:
        ew = p.eye_half_width
        for eye in g.eyes:
            ex, eyy = eye["center"]
            frame = _ellipse(ex, eyy + 0.004, 1.5 * ew, 0.036, 20)
            canvas.line(np.concatenate([frame, frame[:1]], axis=0), 0.005, p.glasses_tone)
        left, right = g.eyes[0]["center"], g.eyes[1]["center"]
        canvas.line([(left[0] + 1.5 * ew, left[1]), (cx, left[1] - 0.012),
                     (right[0] - 1.5 * ew, right[1])], 0.005, p.glasses_tone)

    # nose: sides, wings, nostrils, tip light
    for sign, i_wing, i_nostril in ((-1.0, 31, 32), (1.0, 35, 34)):
        wing = lm[i_wing]
        side = _bezier((lm[27, 0] + sign * 0.018, ey + 0.01),
                       (lm[28, 0] + sign * 0.02, wing[1] - 0.04), wing + (0.0, -0.014), 8)
        canvas.line(side, 0.004, skin * 0.86)
        nostril = (wing + lm[i_nostril]) / 2
        canvas.line(_bezier(wing + (0.0, -0.016), wing + (sign * 0.012, -0.004),
                            nostril + (0, 0.004), 8), 0.005, skin * 0.7)
        canvas.ellipse(nostril[0], nostril[1] - 0.002, 0.011, 0.005, skin * 0.4, 12)
    canvas.ellipse(g.nose_tip[0], g.nose_tip[1] + 0.004, 0.014, 0.01, min(255.0, skin * 1.06), 14)
    canvas.line(lm[31:36], 0.003, skin * 0.8)

    # mouth: lips, opening with teeth, lip line, AU23/24 press lines, AU17 chin boss
    canvas.polygon(g.upper_lip, p.lip_tone * 0.93)
    canvas.polygon(g.lower_lip, p.lip_tone)
    if g.gap > 0.002:
        def paint_mouth(c):
            c.polygon(g.mouth_open, 30)
            teeth = g.upper_inner + (0.0, min(0.014, 0.5 * g.gap))
            c.polygon(np.concatenate([g.upper_inner, teeth[::-1]], axis=0), 205)
            if g.gap > 0.03:
                low = g.lower_inner - (0.0, 0.007)
                c.polygon(np.concatenate([g.lower_inner, low[::-1]], axis=0), 170)

        canvas.clipped(g.mouth_open, paint_mouth)
    canvas.line(g.lip_line, 0.006, p.lip_tone * 0.45)
    press = au[24] + 0.5 * au[23]
    crease(_bezier(lm[50] + (0, -0.012), lm[51] + (0, -0.018), lm[52] + (0, -0.012), 8),
           0.004, 0.3 * depth * press)
    below = lm[57] + (0.0, 0.02 + 0.004 * (1 - au[17]))
    crease(_bezier(below + (-0.025, 0.004), below + (0, -0.004), below + (0.025, 0.004), 8),
           0.004, depth * (0.1 + 0.35 * au[17]))
    if au[17] > 0.02:
        chin = (lm[57] + lm[8]) / 2 + (0.0, 0.01)
        tone = _shade(skin, 0.4 * depth * au[17])
        for dx, dy in ((-0.012, 0.0), (0.012, 0.0), (0.0, 0.012), (-0.006, 0.018), (0.008, 0.016)):
            canvas.ellipse(chin[0] + dx, chin[1] + dy, 0.004, 0.003, tone, 8)
