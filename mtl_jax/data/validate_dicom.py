"""Is a DICOM slice, or a series of them, well-formed? Checked before any pixel is used.

pydicom accepts many malformed files and then fails deep inside, with
messages about its own internals ("'FileDataset' object has no attribute
...", "could not convert string to float"), or does not fail at all: a value
cut short by the end of the file is kept short, a missing or doubled slice
distorts the volume. Each check here names the DICOM tag and what is wrong
with it, as a `BadInputError`, so a reader refuses the file in one line
before decoding any pixel. The NIfTI counterpart is `validate_nifti`.

This module checks FORM only. What mtl-jax is willing to allocate and which
voxel sizes are plausible (the limits) are `readers`' constants and checks,
so that every limit lives in one place.
"""

from __future__ import annotations

import pathlib
import struct

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from mtl_jax.data.validate_nifti import check_affine
from mtl_jax.errors import BadInputError

# DICOM ImageOrientationPatient: direction cosines must be unit vectors and
# orthogonal to this tolerance (scanners write them rounded to ~6 digits).
ORIENTATION_TOLERANCE = 0.01
_DICOMDIR = '1.2.840.10008.1.3.10'  # Media Storage Directory: an index, not an image
# What pydicom raises for a damaged element (wrong length, unknown VR, bad text).
_ELEMENT_ERRORS = (ValueError, TypeError, OverflowError, UnicodeError, struct.error,
                   NotImplementedError, pydicom.errors.BytesLengthException)


def tag_name(keyword: str) -> str:
  """'ImagePositionPatient (0020,0032)': what a user can look up in any DICOM viewer."""
  return f'{keyword} {Tag(tag_for_keyword(keyword))}'


def looks_like_dicom(path) -> bool:
  """A .dcm name or the "DICM" marker at byte 128 (what pydicom requires): a file
  meant as DICOM, so that failing to read it is an error, not a stray file."""
  path = pathlib.Path(path)
  if path.name.lower().endswith('.dcm'):
    return True
  try:
    with open(path, 'rb') as f:
      return f.read(132)[128:] == b'DICM'
  except OSError:
    return False


def dicom_file(path, header_only: bool = False):
  """A pydicom dataset with every element converted, or BadInputError saying why not.

  pydicom reads leniently and converts values lazily: a value cut short by
  the end of the file is kept short (a truncated SeriesInstanceUID becomes
  another series), and a damaged element raises only when first used,
  anywhere. Both are checked here, once, naming the element.
  """
  try:
    ds = pydicom.dcmread(path, stop_before_pixels=header_only)
  except pydicom.errors.InvalidDicomError:
    raise BadInputError('not a DICOM file (no "DICM" marker at byte 128)', path) from None
  except (OSError, EOFError, *_ELEMENT_ERRORS) as e:
    raise BadInputError(f'unreadable DICOM: corrupt or truncated ({e})', path) from None
  size = pathlib.Path(path).stat().st_size
  for dataset in (getattr(ds, 'file_meta', None) or {}, ds):
    for tag in list(dataset.keys()):
      try:
        raw = dataset.get_item(tag)  # as read (PixelData: already converted)
        dataset[tag]  # pylint: disable=pointless-statement
      except _ELEMENT_ERRORS as e:
        raise BadInputError(f'unreadable DICOM: element {Tag(tag)} is damaged ({e})',
                            path) from None
      start = getattr(raw, 'value_tell', None)
      if start is not None and raw.length != 0xFFFFFFFF and start + raw.length > size:
        raise BadInputError(f'truncated DICOM: element {Tag(tag)} runs past the end of '
                            f'the file ({size} bytes)', path)
  return ds


def is_dicomdir(ds) -> bool:
  meta = getattr(ds, 'file_meta', None)
  return str(getattr(meta, 'MediaStorageSOPClassUID', '')) == _DICOMDIR


def text(ds, keyword: str, path, required: bool = True) -> str:
  """A string element ('' when absent and not required)."""
  if keyword not in ds:
    if required:
      raise BadInputError(f'missing DICOM tag {tag_name(keyword)}', path)
    return ''
  try:
    return str(ds[keyword].value or '').strip()
  except _ELEMENT_ERRORS as e:
    raise BadInputError(f'{tag_name(keyword)} is unreadable ({e})', path) from None


def numbers(ds, keyword: str, path, count: int | None = 1, default=None) -> np.ndarray:
  """Finite float values of a numeric element (`default` when absent, if given)."""
  if keyword not in ds:
    if default is None:
      raise BadInputError(f'missing DICOM tag {tag_name(keyword)}', path)
    return np.asarray(default, np.float64).reshape(-1)
  try:
    value = ds[keyword].value
  except _ELEMENT_ERRORS as e:
    raise BadInputError(f'{tag_name(keyword)} is unreadable ({e})', path) from None
  values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
  shown = '\\'.join(str(v) for v in values)[:60]
  if value is None or value == '' or not values:
    raise BadInputError(f'{tag_name(keyword)} is empty', path)
  try:
    out = np.array([float(v) for v in values], np.float64)
  except _ELEMENT_ERRORS:
    raise BadInputError(f'{tag_name(keyword)} is {shown!r}, not a number', path) from None
  if count is not None and out.size != count:
    raise BadInputError(f'{tag_name(keyword)} has {out.size} value'
                        f'{"s" if out.size != 1 else ""} ({shown}); expected {count}', path)
  if not np.all(np.isfinite(out)):
    raise BadInputError(f'{tag_name(keyword)} is {shown!r}: not finite', path)
  return out


def _integer(ds, keyword, path, allowed=None, default=None) -> int:
  value = numbers(ds, keyword, path, 1, default)[0]
  if value != int(value) or (allowed is not None and int(value) not in allowed):
    expected = ('one of ' + ', '.join(map(str, allowed))) if allowed else 'an integer'
    raise BadInputError(f'{tag_name(keyword)} is {value:g}; expected {expected}', path)
  return int(value)


def dicom_geometry(ds, path) -> dict:
  """Checked geometry of one CT slice: position (3,), unit row/column directions
  (6,), PixelSpacing (row, column) mm, rows, columns, rescale slope/intercept."""
  modality = text(ds, 'Modality', path, required=False)
  if modality != 'CT':
    raise BadInputError(f'Modality is {modality!r}, not CT', path)
  position = numbers(ds, 'ImagePositionPatient', path, 3)
  orient = numbers(ds, 'ImageOrientationPatient', path, 6)
  row, col = orient[:3], orient[3:]
  shown = '\\'.join(f'{v:g}' for v in orient)
  for name, vector in (('row', row), ('column', col)):
    length = float(np.linalg.norm(vector))
    if abs(length - 1) > ORIENTATION_TOLERANCE:
      raise BadInputError(f'{tag_name("ImageOrientationPatient")} is {shown}: the '
                          f'{name} direction has length {length:.3g}, not 1', path)
  if abs(float(row @ col)) > ORIENTATION_TOLERANCE:
    raise BadInputError(f'{tag_name("ImageOrientationPatient")} is {shown}: row and '
                        'column directions are not orthogonal', path)
  spacing = numbers(ds, 'PixelSpacing', path, 2)
  if np.any(spacing <= 0):
    raise BadInputError(f'{tag_name("PixelSpacing")} is '
                        f'{spacing[0]:g}\\{spacing[1]:g}; expected two positive '
                        'values (row, column spacing in mm)', path)
  slope = numbers(ds, 'RescaleSlope', path, 1, default=1.0)[0]
  if slope == 0:
    raise BadInputError(f'{tag_name("RescaleSlope")} is 0', path)
  frames = _integer(ds, 'NumberOfFrames', path, default=1)
  if frames != 1:
    raise BadInputError(f'{tag_name("NumberOfFrames")} is {frames}: multi-frame '
                        'DICOM is not supported (one slice per file)', path)
  size = {}
  for keyword in ('Rows', 'Columns'):
    size[keyword] = _integer(ds, keyword, path)
    if size[keyword] < 1:
      raise BadInputError(f'{tag_name(keyword)} is {size[keyword]}; expected at least 1',
                          path)
  unit = np.concatenate([row / np.linalg.norm(row), col / np.linalg.norm(col)])
  return {'series_uid': dicom_series_uid(ds, path), 'position': position,
          'orientation': unit, 'spacing': spacing, 'rows': size['Rows'],
          'columns': size['Columns'], 'slope': slope,
          'intercept': numbers(ds, 'RescaleIntercept', path, 1, default=0.0)[0]}


def dicom_hu(ds, geometry: dict, path) -> np.ndarray:
  """The slice's pixels in HU, float32 (rows, columns); its size already checked."""
  samples = _integer(ds, 'SamplesPerPixel', path, allowed=(1,))
  bits = _integer(ds, 'BitsAllocated', path, allowed=(8, 16, 32))
  if not 1 <= _integer(ds, 'BitsStored', path) <= bits:
    raise BadInputError(f'{tag_name("BitsStored")} is not 1..{bits} (BitsAllocated)', path)
  _integer(ds, 'PixelRepresentation', path, allowed=(0, 1))
  photometric = text(ds, 'PhotometricInterpretation', path)
  if photometric not in ('MONOCHROME1', 'MONOCHROME2'):
    raise BadInputError(f'{tag_name("PhotometricInterpretation")} is {photometric!r}; '
                        'expected MONOCHROME2 (or MONOCHROME1) for CT', path)
  syntax = getattr(getattr(ds, 'file_meta', None), 'TransferSyntaxUID', None)
  if syntax is None:
    raise BadInputError(f'missing DICOM tag {tag_name("TransferSyntaxUID")}', path)
  if not syntax.is_transfer_syntax:
    raise BadInputError(f'{tag_name("TransferSyntaxUID")} is {str(syntax)[:64]!r}, not '
                        'a transfer syntax', path)
  if 'PixelData' not in ds:
    raise BadInputError(f'missing DICOM tag {tag_name("PixelData")}', path)
  data = ds['PixelData'].value
  if not data:
    raise BadInputError(f'{tag_name("PixelData")} is empty', path)
  rows, columns = geometry['rows'], geometry['columns']
  expected = rows * columns * samples * bits // 8
  if not syntax.is_compressed and len(data) < expected:
    raise BadInputError(f'{tag_name("PixelData")} holds {len(data)} bytes; Rows x '
                        f'Columns x BitsAllocated ({rows} x {columns} x {bits}) need '
                        f'{expected} (truncated file?)', path)
  try:
    pixels = ds.pixel_array
  except (ValueError, NotImplementedError, RuntimeError, OSError, EOFError) as e:
    raise BadInputError(f'{tag_name("PixelData")} cannot be decoded (transfer '
                        f'syntax {syntax.name}: {e})', path) from None
  if pixels.shape != (rows, columns):
    raise BadInputError(f'{tag_name("PixelData")} decodes to shape {pixels.shape}, '
                        f'not Rows x Columns ({rows}, {columns})', path)
  hu = pixels.astype(np.float32) * np.float32(geometry['slope'])
  return hu + np.float32(geometry['intercept'])


def dicom_series_affine(geometries: list, where):
  """(slice order, voxel (column, row, slice) -> RAS mm affine) of one series'
  checked slices (`dicom_geometry`): one SeriesInstanceUID; one orientation,
  size and PixelSpacing; positions evenly spaced along the slice normal. A
  missing, doubled or foreign slice would otherwise distort the volume silently.
  """
  series = sorted({g['series_uid'] for g in geometries})
  if len(series) > 1:
    raise BadInputError(f'files of {len(series)} series (SeriesInstanceUID '
                        f'{", ".join(series)}); give one series', where)
  first = geometries[0]
  orient = first['orientation']
  if any(not np.allclose(g['orientation'], orient, atol=1e-4) or
         (g['rows'], g['columns']) != (first['rows'], first['columns']) or
         not np.allclose(g['spacing'], first['spacing'], rtol=1e-3) for g in geometries):
    raise BadInputError('slices differ in orientation, size or PixelSpacing', where)
  normal = np.cross(orient[:3], orient[3:])
  depth = np.array([g['position'] @ normal for g in geometries])
  order = [int(k) for k in np.argsort(depth, kind='stable')]
  gaps = np.diff(depth[order])
  if len(order) > 1 and (gaps.min() <= 1e-3 or np.ptp(gaps) > 0.1 * gaps.mean()):
    raise BadInputError('duplicate or unevenly spaced slice positions (missing '
                        'slices?)', where)
  first, last = geometries[order[0]], geometries[order[-1]]
  row_mm, col_mm = first['spacing']
  lps = np.eye(4)  # voxel (col, row, slice) -> LPS millimetres
  lps[:3, 0], lps[:3, 1] = orient[:3] * col_mm, orient[3:] * row_mm
  lps[:3, 2] = (last['position'] - first['position']) / max(len(order) - 1, 1)
  if len(order) == 1:
    lps[:3, 2] = normal * float(first['spacing'].mean())
  lps[:3, 3] = first['position']
  affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS
  check_affine(affine, 'DICOM slice geometry', where)
  return order, affine


def dicom_series_uid(ds, path) -> str:
  uid = text(ds, 'SeriesInstanceUID', path)
  if not uid:
    raise BadInputError(f'{tag_name("SeriesInstanceUID")} is empty', path)
  return uid
