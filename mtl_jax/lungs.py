"""A classical lung mask from Hounsfield units (no learning), for % involvement.

`segment_lungs(hu, spacing)` works on a volume in canonical RAS order (index
X grows towards the patient's right, Y anterior, Z superior), as
`mtl_jax.data.volume_readers.read_nifti` / `read_dicom_series` return it:

1. Per axial slice: the body is the largest component above -320 HU with its
   holes filled; air-like voxels (< -320 HU) inside it, in components that
   do not touch the slice border, are lung or airway candidates (outside air,
   the table and its foam never are).
2. Trachea and main airways: seeded in the most superior slices at a small
   (0.5-8 cm^2), roughly midline air region, grown in 3-D through voxels
   below -950 HU (stricter thresholds -975 and -990 if that leaks into more
   than 10% of the candidate air), dilated by one voxel in-plane, removed.
3. The two largest remaining 3-D components are the lungs when the second
   has at least 10% of the first's volume; else the largest is cut at its
   centroid along X (lungs joined at the anterior junction). The component
   whose centroid lies at larger X (RAS: towards the patient's right) is the
   right lung.
4. Per slice and per lung: a small closing (~3 mm) and hole filling, so
   vessels and lesions enclosed by aerated lung count as lung. Lesions at the
   pleura that are not enclosed (dense subpleural consolidation) can fall
   outside: `mtl_jax.predict` reports lesion volume outside the mask.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

LUNG_THRESHOLD_HU = -320.0
AIRWAY_THRESHOLDS_HU = (-950.0, -975.0, -990.0)
AIRWAY_MAX_FRACTION = 0.10  # airway region larger than this share of air: leaked
TRACHEA_AREA_MM2 = (50.0, 800.0)
SECOND_LUNG_MIN_RATIO = 0.10
CLOSING_MM = 3.0
RIGHT, LEFT = 1, 2
SIDE_NAMES = {RIGHT: 'right', LEFT: 'left'}
METHOD = ('HU threshold -320 inside the body, border air excluded, trachea/main '
          'airways removed by region growing (< -950 HU) from a midline seed, '
          'two largest 3-D components (right = larger RAS x), per-slice closing '
          'and hole filling')


@dataclasses.dataclass
class Lungs:
  """The lung mask of a volume, right and left apart, and what the
  segmentation had to work around (`notes`, shown in the report)."""
  labels: np.ndarray  # uint8, same shape as the volume: 0, RIGHT (1), LEFT (2)
  notes: list

  def volumes_ml(self, voxel_ml: float) -> dict:
    """Right, left and total lung volume in mL, for voxels of `voxel_ml` mL."""
    counts = np.bincount(self.labels.ravel(), minlength=3)
    return {'right': float(counts[RIGHT] * voxel_ml),
            'left': float(counts[LEFT] * voxel_ml),
            'total': float((counts[RIGHT] + counts[LEFT]) * voxel_ml)}


def _label(mask, structure=None):
  """ndimage.label into uint16 when it fits (half the memory of int32)."""
  try:
    out = np.zeros(mask.shape, np.uint16)
    n = ndimage.label(mask, structure=structure, output=out)
    return out, n
  except RuntimeError:  # more than 65535 components
    return ndimage.label(mask, structure=structure)


def _candidates(hu):
  """Air-like voxels inside the body, not connected to the slice border."""
  air = np.zeros(hu.shape, bool)
  for k in range(hu.shape[2]):
    tissue = hu[:, :, k] >= LUNG_THRESHOLD_HU
    labels, n = ndimage.label(tissue)
    if n == 0:
      continue
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = ndimage.binary_fill_holes(labels == np.argmax(sizes))
    inside = body & ~tissue
    labels, n = ndimage.label(inside)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0],
                                       labels[:, -1]]))
    inside[np.isin(labels, border[border > 0])] = False
    air[:, :, k] = inside
  return air


def _trachea_seed(hu, air, spacing):
  """(x, y, z) of a small midline air region in the upper slices, or None."""
  zs = np.flatnonzero(air.any(axis=(0, 1)))
  if zs.size == 0:
    return None
  px_mm2 = float(spacing[0] * spacing[1])
  for k in zs[::-1][:max(1, int(np.ceil(0.3 * zs.size)))]:
    body_x = np.flatnonzero((hu[:, :, k] >= LUNG_THRESHOLD_HU).any(axis=1))
    if body_x.size == 0:
      continue
    mid, half = (body_x[0] + body_x[-1]) / 2, (body_x[-1] - body_x[0]) / 2
    labels, n = ndimage.label(air[:, :, k])
    best = None
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
      component = labels[region] == index
      area = component.sum() * px_mm2
      if not TRACHEA_AREA_MM2[0] <= area <= TRACHEA_AREA_MM2[1]:
        continue
      cx, cy = ndimage.center_of_mass(component)
      cx, cy = cx + region[0].start, cy + region[1].start
      offset = abs(cx - mid)
      if offset <= 0.15 * half and (best is None or offset < best[0]):
        best = (offset, (int(round(cx)), int(round(cy)), int(k)))
    if best is not None and air[best[1]]:
      return best[1]
  return None


def _airway(hu, air, spacing, notes):
  seed = _trachea_seed(hu, air, spacing)
  if seed is None:
    notes.append('no trachea found in the upper slices: airways not removed')
    return None
  total = int(air.sum())
  for threshold in AIRWAY_THRESHOLDS_HU:
    region = air & (hu < threshold)
    if not region[seed]:
      continue
    labels, _ = _label(region)
    airway = labels == labels[seed]
    if airway.sum() <= AIRWAY_MAX_FRACTION * total:
      in_plane = np.zeros((3, 3, 3), bool)
      in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
      return ndimage.binary_dilation(airway, in_plane) & air
  notes.append('airway region growing leaked into the lungs at every threshold: '
               'airways not removed')
  return None


def segment_lungs(hu: np.ndarray, spacing) -> Lungs:
  """Right/left lung labels of a canonical RAS HU volume (see module doc)."""
  hu = np.asarray(hu)
  spacing = np.asarray(spacing, np.float64)
  notes = []
  air = _candidates(hu)
  airway = _airway(hu, air, spacing, notes)
  if airway is not None:
    air &= ~airway
  labels, n = _label(air)
  out = np.zeros(hu.shape, np.uint8)
  if n == 0:
    notes.append('no lung found (no air-like region inside the body)')
    return Lungs(out, notes)
  sizes = np.bincount(labels.ravel(), minlength=n + 1)
  sizes[0] = 0
  order = np.argsort(sizes)[::-1]
  first = labels == order[0]
  if n > 1 and sizes[order[1]] >= SECOND_LUNG_MIN_RATIO * sizes[order[0]]:
    second = labels == order[1]
    del labels
    x1 = ndimage.center_of_mass(first)[0]
    x2 = ndimage.center_of_mass(second)[0]
    right, left = (first, second) if x1 > x2 else (second, first)
    out[right], out[left] = RIGHT, LEFT
  else:
    del labels
    cx = ndimage.center_of_mass(first)[0]
    x = np.arange(hu.shape[0])[:, None, None]
    out[first & (x > cx)], out[first & (x <= cx)] = RIGHT, LEFT
    notes.append('one lung component: split at its centroid (lungs touch, or one '
                 'lung is missing or collapsed)')
  radius = int(np.clip(round(CLOSING_MM / max(float(spacing[:2].min()), 1e-3)), 1, 5))
  disk = np.hypot(*np.mgrid[-radius:radius + 1, -radius:radius + 1]) <= radius
  for k in range(hu.shape[2]):
    plane = out[:, :, k]
    if not plane.any():
      continue
    for side in (RIGHT, LEFT):
      mask = plane == side
      if not mask.any():
        continue
      padded = np.pad(mask, radius + 1)
      closed = ndimage.binary_closing(padded, disk)[radius + 1:-radius - 1,
                                                    radius + 1:-radius - 1]
      filled = ndimage.binary_fill_holes(closed | mask)
      plane[filled & (plane == 0)] = side
  return Lungs(out, notes)


def add_lesions(lungs: Lungs, lesion: np.ndarray) -> int:
  """Grow the lungs over lesion regions that touch them (in place).

  Dense lesions at the pleura (consolidation, effusion-like opacities) are
  above -320 HU and not enclosed by aerated lung, so step 4 misses them. Per
  axial slice, each lesion component that touches a lung (8-connected) joins
  the lung it touches most. Returns how many lesion voxels stay outside.
  """
  labels = lungs.labels
  eight = np.ones((3, 3), bool)
  for k in range(labels.shape[2]):
    les = lesion[:, :, k] > 0
    if not les.any():
      continue
    plane = labels[:, :, k]
    components, n = ndimage.label(les & (plane == 0), eight)
    for index, region in enumerate(ndimage.find_objects(components), start=1):
      grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in region)
      component = components[grown] == index
      ring = ndimage.binary_dilation(component, eight) & ~component
      touching = np.bincount(plane[grown][ring], minlength=3)[1:]
      if touching.any():
        plane[grown][component] = 1 + int(np.argmax(touching))
  return int(((lesion > 0) & (labels == 0)).sum())
