"""Normal chest anatomy for the synthetic CT generator (`synthetic.py`).

Body, fat, muscle, ribs, vertebra, mediastinum (heart, aorta, airways), lungs
with a branching vessel tree, in Hounsfield units, drawn in normalised
coordinates so that any image size works. Lesions are drawn on top by
`synthetic.py`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


AIR_HU, FAT_HU, MUSCLE_HU, LUNG_HU = -1000.0, -95.0, 45.0, -875.0
GGO_RANGE, CONSOLIDATION_RANGE = (-700.0, -300.0), (-100.0, 50.0)
NOISE_HU = 20.0


# ----------------------------------------------------------------------------
# Small vectorised helpers.


def _grid(size):
  axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
  return np.meshgrid(axis, axis, indexing='ij')  # y (anterior->posterior), x


def smooth_noise(rng, size, sigma_px):
  """Unit-variance Gaussian random field with correlation length `sigma_px`.

  Wide fields are drawn at a lower resolution and upsampled (much cheaper).
  """
  factor = max(1, int(sigma_px // 2))
  small = -(-size // factor)
  field = ndimage.gaussian_filter(
      rng.standard_normal((small, small)).astype(np.float32), sigma_px / factor,
      mode='wrap', truncate=3.0)
  if factor > 1:
    field = ndimage.zoom(field, factor, order=1, mode='grid-wrap',
                         grid_mode=True)[:size, :size]
  return field / (field.std() + 1e-6)


def _harmonics(rng, angle, amplitude, orders=(2, 3, 4, 5)):
  """A smooth random function of angle (for irregular outlines)."""
  out = np.zeros_like(angle)
  for k in orders:
    out += rng.normal(0, amplitude / k) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
  return out


def smooth_region(region, sigma_px):
  """Round off a binary region's corners (blur, then threshold at 1/2)."""
  if sigma_px <= 0:
    return region
  return ndimage.gaussian_filter(region.astype(np.float32), sigma_px) > 0.5


def _to_pixels(size, y, x):
  """Normalised coordinates -> fractional pixel indices."""
  return (y + 1) / 2 * size - 0.5, (x + 1) / 2 * size - 0.5


def _splat(size, py, px, weights=None):
  """Nearest-pixel (weighted) hit counts of points in fractional pixel indices."""
  iy, ix = np.rint(py).astype(np.int64), np.rint(px).astype(np.int64)
  keep = (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size)
  counts = np.bincount(iy[keep] * size + ix[keep],
                       None if weights is None else weights[keep], size * size)
  return counts.reshape(size, size).astype(np.float32)


# ----------------------------------------------------------------------------
# Anatomy.


def sample_patient(rng: np.random.Generator) -> dict:
  """Per-patient anatomy; slices of one patient share it (see `generate_slice`)."""
  bx = rng.uniform(0.76, 0.93)
  return {
      'bx': bx,                               # body half-width
      'by': bx * rng.uniform(0.62, 0.78),     # body half-height
      'cy': rng.uniform(-0.08, 0.04),         # body centre (image coordinates)
      'cx': rng.uniform(-0.05, 0.05),
      'theta': np.deg2rad(rng.uniform(-6, 6)),  # rotation on the table
      'fat': rng.uniform(0.025, 0.09),        # subcutaneous fat thickness
      'wall': rng.uniform(0.05, 0.07),        # muscle + ribs
      'heart': rng.uniform(0.85, 1.15),       # heart size factor
      'lung_wobble': rng.uniform(0.01, 0.025),
      'table_gap': rng.uniform(0.0, 0.04),
  }


class _Frame:
  """Patient-rotated coordinates (u: anterior->posterior, v: right->left)."""

  def __init__(self, size, patient):
    self.size = size
    y, x = _grid(size)
    self.y, self.x = y, x
    self.cy, self.cx, t = patient['cy'], patient['cx'], patient['theta']
    self.c, self.s = np.float32(np.cos(t)), np.float32(np.sin(t))
    dy, dx = y - self.cy, x - self.cx
    self.u = self.c * dy - self.s * dx
    self.v = self.s * dy + self.c * dx
    self.px_per_unit = size / 2.0

  def pixels(self, u, v):
    """(u, v) -> fractional pixel indices (row, col)."""
    y = self.cy + self.c * u + self.s * v
    x = self.cx - self.s * u + self.c * v
    return _to_pixels(self.size, y, x)

  def depth(self, region):
    """Distance from each pixel of `region` to its edge, in normalised units."""
    return ndimage.distance_transform_edt(region).astype(np.float32) / self.px_per_unit

  def disk(self, cu, cv, r):
    return (self.u - cu) ** 2 + (self.v - cv) ** 2 < r * r

  def ellipse(self, cu, cv, ru, rv, angle=0.0):
    ca, sa = np.cos(angle), np.sin(angle)
    du, dv = self.u - cu, self.v - cv
    a, b = ca * du + sa * dv, -sa * du + ca * dv
    return (a / ru) ** 2 + (b / rv) ** 2 < 1.0


def _body_and_bones(rng, f, patient, z, hu):
  """Body, fat, muscle, ribs, spine; returns (body, cavity, spine_info)."""
  size, u, v = f.size, f.u, f.v
  bx, by = patient['bx'], patient['by']
  angle = np.arctan2(u / by, v / bx)
  # A superellipse, flatter at the back where the patient lies on the table.
  r = (np.abs(v / bx) ** 2.3 + np.abs(u / by) ** 2.3) ** (1 / 2.3)
  body = (r < 1.0 + _harmonics(rng, angle, 0.025)) & (u < by * 0.93)
  body = smooth_region(body, 0.01 * size)
  depth = f.depth(body)
  fat_here = patient['fat'] * (1 + 0.5 * _harmonics(rng, angle, 1.0, (1, 2, 3)))
  fat_here = np.clip(fat_here, 0.015, 0.14)
  hu[body] = FAT_HU
  muscle = body & (depth > fat_here)
  hu[muscle] = MUSCLE_HU
  # Thoracic cavity: inside the chest wall; the apex (small z) is narrower.
  wall = fat_here + patient['wall'] + 0.16 * (1 - z) ** 2
  cavity = depth > wall + patient['lung_wobble'] * smooth_noise(rng, size, 0.06 * size)

  # Ribs: short arcs inside the chest wall, clear of the spine and sternum.
  rib_depth = fat_here + patient['wall'] * rng.uniform(0.35, 0.6)
  band = body & (np.abs(depth - rib_depth) < 0.018)
  body_angle = np.arctan2(u, v)
  centres, widths = [], []
  for side in (-1, 1):
    phis = np.linspace(0.25, 2.9, int(rng.integers(5, 8))) + rng.normal(0, 0.06)
    # Sweep from anterior (-pi/2) over the lateral side to posterior (+pi/2).
    centres.append(phis - np.pi / 2 if side > 0 else np.pi - (phis - np.pi / 2))
    widths.append(rng.uniform(0.05, 0.13, len(phis)))
  centres, widths = np.concatenate(centres), np.concatenate(widths)
  gap = np.abs((body_angle[band][None] - centres[:, None] + np.pi) % (2 * np.pi) - np.pi)
  ribs = np.zeros_like(band)
  ribs[band] = (gap < widths[:, None]).any(0)
  ribs &= np.abs(v) > 0.22
  hu[ribs] = rng.uniform(350, 650)

  # Spine: vertebral body (cortical rim), canal, lamina, spinous process.
  back = by * 0.93
  r_vb = rng.uniform(0.08, 0.1)
  u_vb = back - patient['fat'] - 0.24
  vertebra = f.disk(u_vb, 0.0, r_vb)
  hu[vertebra] = 750.0
  hu[f.disk(u_vb, 0.0, r_vb - 0.018)] = rng.uniform(220, 330)
  u_canal = u_vb + r_vb + 0.04
  lamina = f.disk(u_canal, 0.0, 0.06) & (u > u_canal - 0.005)
  spinous = (np.abs(v) < 0.014) & (u > u_canal) & (u < u_canal + rng.uniform(0.08, 0.12))
  transverse = ((np.abs(u - u_canal + 0.005 + 0.15 * (np.abs(v) - 0.04)) < 0.014) &
                (np.abs(v) < rng.uniform(0.09, 0.12)))
  hu[(lamina | spinous | transverse) & body] = 600.0
  hu[f.disk(u_canal, 0.0, 0.037)] = 25.0
  # Paravertebral region (muscles, rib heads): never lung.
  spine_region = (f.disk(u_vb, 0.0, r_vb + 0.035) |
                  ((u > u_vb) & (np.abs(v) < r_vb + 0.09)))
  return body, cavity & ~spine_region, (u_vb, r_vb)


def _mediastinum(rng, f, patient, z, spine, cavity, hu):
  """Mediastinal fat, heart, aorta, airway; returns (mediastinum, hilum_u)."""
  u, v = f.u, f.v
  u_vb, r_vb = spine
  anterior = -patient['by'] * 0.9
  column = (np.abs(v - 0.01) < rng.uniform(0.07, 0.1)) & (u < u_vb) & cavity
  media = column.copy()
  hu[column] = FAT_HU + 10
  # Descending aorta: left-anterior of the vertebra, at every level.
  aorta = f.disk(u_vb - 0.3 * r_vb, r_vb + 0.055, rng.uniform(0.05, 0.062))
  # Heart (lower levels) or vascular pedicle (upper levels), left of midline.
  heart_scale = patient['heart'] * np.clip((z - 0.4) / 0.35, 0, 1) ** 0.5
  organs = aorta.copy()
  if heart_scale > 0.05:
    heart_u, heart_v = anterior * 0.4 + 0.06 * heart_scale, rng.uniform(0.09, 0.15)
    heart_angle = rng.uniform(0.3, 0.7)
    heart = f.ellipse(heart_u, heart_v, 0.21 * heart_scale, 0.27 * heart_scale,
                      angle=heart_angle)
    pericardial_fat = f.ellipse(heart_u, heart_v, 0.21 * heart_scale + 0.02,
                                0.27 * heart_scale + 0.025, angle=heart_angle)
    pericardial_fat &= cavity
    hu[pericardial_fat] = FAT_HU
    media |= pericardial_fat
    organs |= heart
  if z < 0.6:
    pedicle = f.ellipse(anterior * 0.45, 0.04, 0.12, 0.14 + 0.1 * z)
    organs |= pedicle
  organs &= cavity
  hu[organs] = MUSCLE_HU - 5
  media |= organs
  # Airway: trachea above the carina, main bronchi just below it.
  u_air = u_vb - r_vb - 0.06
  if z < 0.42:
    airways = [(u_air, 0.0, 0.045)]
  elif z < 0.55:
    airways = [(u_air, -0.085, 0.03), (u_air, 0.085, 0.028)]
  else:
    airways = []
  for cu, cv, r in airways:
    wall = f.disk(cu, cv, r + 0.01) & cavity
    hu[wall] = MUSCLE_HU
    hu[f.disk(cu, cv, r)] = AIR_HU
    media |= wall
  return media, u_air


def _vessel_tree(rng, f, hilum_u, hilum_v, side, scale=1.0, levels=4):
  """Hit counts of a branching, partly out-of-plane vessel tree (one lung).

  Built a generation at a time (all branches of a generation vectorised):
  each branch is a slightly curved segment sampled every half pixel along and
  across its width; each splits in two; deeper branches often leave the slice.
  """
  step = 0.5 / f.px_per_unit  # half a pixel, in normalised units
  lateral = 0.0 if side > 0 else np.pi  # angle 0 points to +v (patient left)
  n = max(2, int(round(rng.integers(4, 7) * scale)))
  u0 = hilum_u + rng.normal(0, 0.04, n)
  v0 = np.full(n, hilum_v) + rng.normal(0, 0.015, n)
  a0 = lateral + rng.uniform(-1.4, 1.4, n)
  length = rng.uniform(0.1, 0.18, n) * np.sqrt(scale)
  width = rng.uniform(0.012, 0.02, n)
  us, vs, ws = [], [], []
  for level in range(levels):
    bend = rng.normal(0, 0.5, n)
    samples = max(2, int(np.ceil(length.max() / step)))
    t = np.linspace(0, 1, samples, dtype=np.float32)[None, :]
    a = a0[:, None] + bend[:, None] * t                       # (n, samples)
    seg = (length / samples)[:, None]
    cu = u0[:, None] + np.cumsum(np.sin(a) * seg, axis=1)
    cv = v0[:, None] + np.cumsum(np.cos(a) * seg, axis=1)
    visible = rng.random(n) > (0.0 if level == 0 else 0.45)
    m = max(1, int(np.ceil(width.max() / step)))
    across = np.linspace(-0.5, 0.5, m, dtype=np.float32) if m > 1 else np.zeros(1, np.float32)
    half = (width[:, None] * (1 - 0.3 * t))[:, :, None] * across   # (n, samples, m)
    pu = cu[:, :, None] - np.cos(a)[:, :, None] * half
    pv = cv[:, :, None] + np.sin(a)[:, :, None] * half
    # Narrow branches get fewer across-samples: drop offsets beyond the width.
    keep = (np.abs(half) <= width[:, None, None] / 2 + 1e-6) & visible[:, None, None]
    us.append(pu[keep])
    vs.append(pv[keep])
    # Vessels narrower than the sampling (one line of points) count in
    # proportion to their width: partial volume, the same at every image size.
    partial = np.minimum(1.0, width / step)[:, None, None]
    ws.append(np.broadcast_to(partial, keep.shape)[keep])
    # Two children per branch.
    u0 = np.repeat(cu[:, -1], 2)
    v0 = np.repeat(cv[:, -1], 2)
    spread = rng.uniform(0.25, 0.7, 2 * n) * np.tile([-1.0, 1.0], n)
    a0 = np.repeat(a[:, -1], 2) + spread
    length = np.repeat(length, 2) * rng.uniform(0.6, 0.85, 2 * n)
    width = np.repeat(width, 2) * 0.68
    n *= 2
  py, px = f.pixels(np.concatenate(us), np.concatenate(vs))
  return _splat(f.size, py, px, np.concatenate(ws))


def _lungs_and_vessels(rng, f, cavity, media, hilum_u, hu):
  size, u, v = f.size, f.u, f.v
  lungs_any = smooth_region(cavity & ~media, 0.012 * size)
  lungs = np.stack([lungs_any & (v < 0.01), lungs_any & (v >= 0.01)])
  # Parenchyma: denser posteriorly (gravity), faint texture.
  gradient = np.clip((u + 0.4) / 0.8, 0, 1)
  parenchyma = (LUNG_HU + 55 * gradient +
                10 * smooth_noise(rng, size, 0.02 * size))
  hu[lungs_any] = parenchyma[lungs_any]
  # Vessels: branching trees from each hilum, plus through-plane dots; fewer
  # in small lungs (apex) so that the vessel density stays about the same.
  scale = float(np.clip(lungs_any.mean() / 0.2, 0.3, 1.0))
  hits = np.zeros((size, size), np.float32)
  for side, sign in ((0, -1), (1, 1)):
    hits += _vessel_tree(rng, f, hilum_u + rng.normal(0, 0.03), sign * 0.13, sign,
                         scale)
  # Through-plane vessels: dots, larger near the hilum (a Gaussian splat).
  points = np.argwhere(lungs_any)
  if len(points):
    dots = points[rng.integers(len(points), size=int(rng.integers(20, 45) * scale))]
    du, dv = u[dots[:, 0], dots[:, 1]], v[dots[:, 0], dots[:, 1]]
    r_px = f.px_per_unit * np.clip(
        0.018 - 0.02 * np.hypot(du - hilum_u, np.abs(dv) - 0.13), 0.004, 0.018)
    # Area-preserving: a dot of radius r puts ~1.5 pi r^2 of vessel in the slice.
    weights = 1.5 * np.pi * r_px ** 2 * rng.uniform(0.6, 1.4, len(dots))
    splat = np.bincount(dots[:, 0] * size + dots[:, 1], weights, size * size)
    dot_field = ndimage.gaussian_filter(
        splat.reshape(size, size).astype(np.float32), max(0.5, 0.006 * size))
    hits += 4.0 * dot_field  # occupancy below is hits / 4
  occupancy = np.clip(2.5 * (ndimage.gaussian_filter(hits, 0.35) / 4.0 - 0.12), 0, 1)
  occupancy *= lungs_any
  vessel_hu = rng.uniform(25, 60)
  hu += occupancy * (vessel_hu - hu)
  # Peri-hilar bronchi: small air rings beside the vessels.
  for sign in (-1, 1):
    for _ in range(int(rng.integers(2, 5))):
      cu = hilum_u + rng.normal(0, 0.08)
      cv = sign * (0.16 + abs(rng.normal(0, 0.08)))
      r = rng.uniform(0.012, 0.022)
      ring = f.disk(cu, cv, r + 0.007) & lungs_any
      hu[ring] = rng.uniform(-50, 30)
      hu[f.disk(cu, cv, r) & lungs_any] = -950.0
  return lungs


def draw_anatomy(rng, size, patient, z):
  """(hu, lungs (2, S, S) bool, frame) of a normal slice."""
  f = _Frame(size, patient)
  hu = np.full((size, size), AIR_HU, np.float32)
  # The table: a curved shell under the patient (not rotated with them).
  table_top = patient['cy'] + patient['by'] * 0.93 + patient['table_gap'] + 0.15 * f.x ** 2
  hu[(f.y > table_top) & (f.y < table_top + 0.03) & (np.abs(f.x) < 0.9)] = 150.0
  hu[(f.y > table_top + 0.03) & (f.y < table_top + 0.08) & (np.abs(f.x) < 0.85)] = -850.0
  body, cavity, spine = _body_and_bones(rng, f, patient, z, hu)
  media, hilum_u = _mediastinum(rng, f, patient, z, spine, cavity, hu)
  lungs = _lungs_and_vessels(rng, f, cavity, media, hilum_u, hu)
  return hu, lungs, f


# ----------------------------------------------------------------------------
# Pathology.
