"""Reading and validating CT inputs: 2-D slices, masks, NIfTI volumes, DICOM series.

Every reader either returns clean arrays or raises `BadInputError(reason, path)`,
so a builder can check ALL files first (`BadFiles`) and report every bad one in
one error, instead of failing on the first or silently dropping files.
Volumes come back in canonical RAS orientation; `axial_slices` turns them into
radiological display order (anterior up, patient right on the image left).
"""

from __future__ import annotations

import csv
import pathlib
import re
import zipfile
import zlib
from xml.etree import ElementTree

import numpy as np
from PIL import Image, ImageChops, UnidentifiedImageError

from mtl_jax.errors import BadInputError

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
NIFTI_SUFFIXES = ('.nii', '.nii.gz')
# A screenshot from a paper may carry coloured arrows; a photograph is colour
# almost everywhere. More than this fraction of strongly coloured pixels
# (channel spread > 32 of 255) means "not a grayscale CT rendering".
MAX_COLOUR_FRACTION = 0.25
_SEG_LABELS = (0, 1, 2)
_DECODE_ERRORS = (OSError, EOFError, ValueError, SyntaxError, zlib.error,
                  UnidentifiedImageError, Image.DecompressionBombError)


class BadFiles:
  """Collects every bad file with its reason, then raises once or records them."""

  def __init__(self, dataset: str, root):
    self.dataset, self.root, self.bad = dataset, pathlib.Path(root), {}

  def add(self, path, reason: str):
    self.bad.setdefault(self._rel(path), reason)

  def run(self, fn, *args, **kwargs):
    """fn(*args) or None if it raised BadInputError (then recorded)."""
    try:
      return fn(*args, **kwargs)
    except BadInputError as e:
      self.add(e.path or self.root, e.reason)
      return None

  def _rel(self, path) -> str:
    try:
      return str(pathlib.Path(path).relative_to(self.root))
    except ValueError:
      return str(path)

  def __len__(self):
    return len(self.bad)

  def message(self) -> str:
    lines = [f'{self.dataset}: {len(self)} bad files in {self.root} '
             '(use --skip_bad to build without them):']
    lines += [f'  {path}: {reason}' for path, reason in sorted(self.bad.items())]
    return '\n'.join(lines)

  def finish(self, skip_bad: bool) -> list:
    """Raise listing all bad files, or (skip_bad) return them as records."""
    if self.bad and not skip_bad:
      raise BadInputError(self.message())
    if self.bad:
      print(f'{self.dataset}: skipped {len(self)} bad files (recorded in the '
            "dataset's metadata as 'skipped')")
    return [{'path': p, 'reason': r} for p, r in sorted(self.bad.items())]


def is_nifti(path) -> bool:
  return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_suffix(name: str) -> str:
  """File name without .nii.gz / .png / ... (a DICOM folder name as is)."""
  for suffix in NIFTI_SUFFIXES[::-1] + IMAGE_SUFFIXES + ('.dcm',):
    if name.lower().endswith(suffix):
      return name[:-len(suffix)]
  return name


def list_files(folder, suffixes=IMAGE_SUFFIXES, bad: BadFiles | None = None) -> list:
  """Sorted data files in `folder`; other files are reported to `bad` (not dropped)."""
  out = []
  for entry in sorted(pathlib.Path(folder).iterdir()):
    if entry.name.startswith('.'):
      continue  # .DS_Store and friends are not data
    if entry.is_file() and entry.name.lower().endswith(tuple(suffixes)):
      out.append(entry)
    elif bad is not None:
      bad.add(entry, f'unexpected {"folder" if entry.is_dir() else "file"} '
              f'(expected {"/".join(suffixes)} files)')
  return out


def _open_image(path) -> Image.Image:
  try:
    image = Image.open(path)
    image.load()  # decode now: truncated files fail here, not later
    return image
  except _DECODE_ERRORS as e:
    raise BadInputError(f'unreadable image ({type(e).__name__}: {e})', path) from None


def read_image(path) -> np.ndarray:
  """An 8-bit grayscale slice as float32 0..255 (H, W); colour photographs are errors."""
  image = _open_image(path)
  if image.mode == 'P':  # a palette may hold colours: check as RGB
    image = image.convert('RGB')
  if image.mode in ('L', '1', 'LA'):
    return np.asarray(image.convert('L'), np.float32)
  if image.mode not in ('RGB', 'RGBA'):
    raise BadInputError(f'unsupported image mode {image.mode} (expected 8-bit '
                        'grayscale or RGB with equal channels)', path)
  red, green, blue = image.convert('RGB').split()
  if (ImageChops.difference(red, green).getbbox() is None and
      ImageChops.difference(green, blue).getbbox() is None):
    return np.asarray(red, np.float32)  # gray stored as RGB
  rgb = np.asarray(image.convert('RGB'), np.int16)
  colourful = float(np.mean(rgb.max(-1) - rgb.min(-1) > 32))
  if colourful > MAX_COLOUR_FRACTION:
    raise BadInputError(f'colour image ({colourful:.0%} of pixels coloured), not '
                        'a grayscale CT slice', path)
  return np.asarray(image.convert('RGB').convert('L'), np.float32)


def read_mask(path, soft: bool = False) -> np.ndarray:
  """A PNG lesion mask as uint8 labels 0 bg / 1 GGO / 2 consolidation.

  Palette PNG -> its indices; grayscale {0,255} (binary lesion) -> {0,1};
  grayscale already in {0,1,2} -> as is. `soft` (model-made 0..255
  probabilities) thresholds at 128 -> {0,1}.
  """
  image = _open_image(path)
  if image.mode == 'P':
    return check_labels(np.asarray(image), path)
  if image.mode not in ('L', '1'):
    raise BadInputError(f'mask has mode {image.mode} (expected a palette or '
                        'grayscale PNG)', path)
  values = np.asarray(image.convert('L'))
  if soft:
    return (values >= 128).astype(np.uint8)
  present = set(np.unique(values).tolist())
  if present <= {0, 255}:
    return (values > 0).astype(np.uint8)
  return check_labels(values, path)


def check_labels(mask, path) -> np.ndarray:
  mask = np.asarray(mask)
  if not np.all(np.isfinite(mask)) or not np.all(mask == np.round(mask)):
    raise BadInputError('mask has non-integer values', path)
  bad = sorted(set(np.unique(mask).astype(int).tolist()) - set(_SEG_LABELS))
  if bad:
    raise BadInputError(f'unexpected mask labels {bad[:8]} (expected 0 bg, '
                        '1 GGO, 2 consolidation)', path)
  return mask.astype(np.uint8)


def map_labels(mask, mapping, path) -> np.ndarray:
  """Volume mask labels -> spec labels: 'labels' (0/1/2 as is), 'nonzero' (>0 -> 1)
  or a dict {raw: label} that must cover every value present."""
  mask = np.asarray(mask)
  if not np.all(mask == np.round(mask)):
    raise BadInputError('mask has non-integer values', path)
  if mapping == 'nonzero':
    return (mask > 0).astype(np.uint8)
  if mapping == 'labels':
    return check_labels(mask, path)
  values = np.unique(mask).astype(int)
  unknown = sorted(set(values.tolist()) - set(mapping))
  if unknown:
    raise BadInputError(f'unexpected mask labels {unknown[:8]} (expected '
                        f'{sorted(mapping)})', path)
  lut = np.zeros(int(values.max()) + 1, np.uint8)
  for raw, new in mapping.items():
    if raw <= values.max():
      lut[raw] = new
  return lut[mask.astype(np.int64)]


def _volume_checks(data, path) -> np.ndarray:
  while data.ndim > 3 and data.shape[-1] == 1:
    data = data[..., 0]
  if data.ndim != 3:
    raise BadInputError(f'expected a 3-D volume, got shape {data.shape}', path)
  if min(data.shape) < 1 or not np.all(np.isfinite(data)):
    raise BadInputError('volume is empty or has NaN/inf values', path)
  return data


def read_nifti(path):
  """(data float32 (X, Y, Z) in RAS, spacing (3,) mm, affine) of a NIfTI file."""
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  try:
    image = nib.as_closest_canonical(nib.load(str(path)))
    data = image.get_fdata(dtype=np.float32)
  except (*_DECODE_ERRORS, nib.filebasedimages.ImageFileError) as e:
    raise BadInputError(f'unreadable NIfTI ({type(e).__name__}: {e})', path) from None
  data = _volume_checks(data, path)
  return data, np.asarray(image.header.get_zooms()[:3], np.float32), image.affine


def read_dicom_series(folder):
  """(HU float32 (X, Y, Z) in RAS, spacing, affine) of a folder of CT DICOM slices.

  Slices are sorted by ImagePositionPatient along the slice normal; pixel data
  is rescaled to HU with RescaleSlope/RescaleIntercept.
  """
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  import pydicom  # pylint: disable=g-import-not-at-top
  files = [f for f in sorted(pathlib.Path(folder).iterdir())
           if f.is_file() and not f.name.startswith('.')]
  if not files:
    raise BadInputError('DICOM series folder is empty', folder)
  slices, problems = [], []
  for f in files:
    try:
      ds = pydicom.dcmread(f)
      if ds.get('Modality') != 'CT':
        raise ValueError(f'Modality is {ds.get("Modality")!r}, not CT')
      orient = np.asarray(ds.ImageOrientationPatient, np.float64)
      hu = ds.pixel_array.astype(np.float32) * float(ds.get('RescaleSlope', 1))
      hu += float(ds.get('RescaleIntercept', 0))
      slices.append((np.asarray(ds.ImagePositionPatient, np.float64), orient,
                     np.asarray(ds.PixelSpacing, np.float64), hu))
    except (*_DECODE_ERRORS, AttributeError, KeyError, TypeError, RuntimeError,
            NotImplementedError, pydicom.errors.InvalidDicomError) as e:
      problems.append(f'{f.name} ({type(e).__name__}: {e})')
  if problems:
    raise BadInputError(f'bad DICOM files: {"; ".join(problems)}', folder)
  orient = slices[0][1]
  if any(not np.allclose(s[1], orient, atol=1e-4) or s[3].shape != slices[0][3].shape
         for s in slices):
    raise BadInputError('slices differ in orientation or size', folder)
  normal = np.cross(orient[:3], orient[3:])
  slices.sort(key=lambda s: float(s[0] @ normal))
  depth = np.array([s[0] @ normal for s in slices])
  gaps = np.diff(depth)
  if len(slices) > 1 and (gaps.min() <= 1e-3 or np.ptp(gaps) > 0.1 * gaps.mean()):
    raise BadInputError('duplicate or unevenly spaced slice positions (missing '
                        'slices?)', folder)
  row_mm, col_mm = slices[0][2]
  lps = np.eye(4)  # voxel (col, row, slice) -> LPS millimetres
  lps[:3, 0], lps[:3, 1] = orient[:3] * col_mm, orient[3:] * row_mm
  lps[:3, 2] = (slices[-1][0] - slices[0][0]) / max(len(slices) - 1, 1)
  if len(slices) == 1:
    lps[:3, 2] = normal * float(slices[0][2].mean())
  lps[:3, 3] = slices[0][0]
  affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS
  data = np.stack([s[3].T for s in slices], axis=-1)
  image = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
  data = _volume_checks(np.asarray(image.dataobj, np.float32), folder)
  return data, np.asarray(image.header.get_zooms()[:3], np.float32), image.affine


def read_volume(path):
  """A NIfTI file or a DICOM series folder, canonical RAS."""
  return read_dicom_series(path) if pathlib.Path(path).is_dir() else read_nifti(path)


def intensity_kind(volume, path) -> str:
  """'hu' (CT numbers, has air near -1000) or '8bit' (a 0..255 rendering)."""
  low, high = float(volume.min()), float(volume.max())
  if low < -200:
    return 'hu'
  if low >= 0 and high <= 255:
    return '8bit'
  raise BadInputError(f'intensities {low:.0f}..{high:.0f} are neither HU (air '
                      'near -1000) nor an 8-bit 0..255 rendering', path)


def axial_slices(volume) -> np.ndarray:
  """RAS (X, Y, Z) -> (Z, rows, cols) in radiological display orientation."""
  return np.ascontiguousarray(np.transpose(volume, (2, 1, 0))[:, ::-1, ::-1])


def same_geometry(shape_a, affine_a, shape_b, affine_b) -> bool:
  return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=1e-3)


def read_list(path) -> list:
  """Non-empty, stripped lines of a split list."""
  with open(path, encoding='utf-8') as f:
    return [line.strip() for line in f if line.strip()]


def read_csv(path) -> list:
  with open(path, newline='', encoding='utf-8-sig') as f:
    return list(csv.DictReader(f))


def read_xlsx_columns(path, columns) -> list:
  """Rows of the first sheet of an .xlsx as dicts of the named header columns
  (stdlib only: no openpyxl)."""
  ns = {'m': 'http://schemas.openxmlformats.org/spreadsheetml/2006/main'}
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    strings = []
    if 'xl/sharedStrings.xml' in names:
      root = ElementTree.fromstring(z.read('xl/sharedStrings.xml'))
      strings = [''.join(t.text or '' for t in si.iter(f'{{{ns["m"]}}}t'))
                 for si in root.findall('m:si', ns)]
    sheet = ElementTree.fromstring(z.read('xl/worksheets/sheet1.xml'))
  rows = []
  for row in sheet.iter(f'{{{ns["m"]}}}row'):
    cells = {}
    for cell in row.findall('m:c', ns):
      value = cell.find('m:v', ns)
      if value is not None:
        col = re.match(r'[A-Z]+', cell.get('r')).group()
        cells[col] = strings[int(value.text)] if cell.get('t') == 's' else value.text
    rows.append(cells)
  if not rows:
    return []
  header = {v: k for k, v in rows[0].items()}
  return [{c: r.get(header.get(c), '') for c in columns} for r in rows[1:]]
