"""Is a NIfTI header or a DICOM slice well-formed? Checked before any voxel is read.

nibabel and pydicom accept many malformed files and then fail deep inside,
with messages about their own internals (a MemoryError for a header that
declares 32767^3 voxels, "'FileDataset' object has no attribute ...",
"could not convert string to float"), or do not fail at all: complex voxels
silently lose their imaginary part, a NaN or rank-deficient affine reaches
the reorientation code. Each check here names the header field or DICOM tag
and what is wrong with it, as a `BadInputError`, so a reader refuses the file
in one line before allocating anything.

This module checks FORM only. What mtl-jax is willing to allocate and which
voxel sizes are plausible (the limits) are `readers`' constants and checks,
so that every limit lives in one place.
"""

from __future__ import annotations

import gzip
import pathlib
import struct
import zlib

import nibabel as nib
import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from mtl_jax.errors import BadInputError

# Real-valued NIfTI data types (code -> name). Complex, RGB, binary, float128
# and unknown codes are refused: a CT voxel is one real number.
REAL_NIFTI_TYPES = {2: 'uint8', 4: 'int16', 8: 'int32', 16: 'float32', 64: 'float64',
                    256: 'int8', 512: 'uint16', 768: 'uint32', 1024: 'int64',
                    1280: 'uint64'}
_NIFTI_KINDS = {348: nib.Nifti1Header, 540: nib.Nifti2Header}  # sizeof_hdr -> header
# DICOM ImageOrientationPatient: direction cosines must be unit vectors and
# orthogonal to this tolerance (scanners write them rounded to ~6 digits).
ORIENTATION_TOLERANCE = 0.01
_DICOMDIR = '1.2.840.10008.1.3.10'  # Media Storage Directory: an index, not an image
# What pydicom raises for a damaged element (wrong length, unknown VR, bad text).
_ELEMENT_ERRORS = (ValueError, TypeError, OverflowError, UnicodeError, struct.error,
                   NotImplementedError, pydicom.errors.BytesLengthException)


# ----------------------------------------------------------------------- NIfTI
def nifti_header(raw: bytes, path):
  """The header of a single-file NIfTI-1/2 from the file's first bytes, checked.

  Returns (header, shape, dtype, data offset). The header is nibabel's, with
  the repairs nibabel itself makes on loading done here silently (qfac not
  +-1 -> 1, vox_offset 0 -> the minimum), so that what was checked is what is
  used. Refused: no NIfTI-1/2 header, a .hdr/.img pair's header, dim[0] not
  1..7 or empty axes, a shape that is not 3-D, a datatype that is not real
  numbers, vox_offset inside the header, unknown xform codes, a slope with a
  non-finite intercept, and a non-finite or degenerate qform/sform/affine.
  """
  header = _parse(raw, path)
  shape = _shape(header, path)
  code = int(header['datatype'])
  if code not in nib.nifti1.data_type_codes.value_set():
    raise BadInputError(f'NIfTI datatype {code} is not a NIfTI data type', path)
  if code not in REAL_NIFTI_TYPES:
    raise BadInputError(f'NIfTI datatype {code} ({nib.nifti1.data_type_codes.label[code]}) '
                        'is not supported: expected real numbers ('
                        + ', '.join(REAL_NIFTI_TYPES.values()) + ')', path)
  offset = _offset(header, path)
  for field in ('qform_code', 'sform_code'):
    if int(header[field]) not in nib.nifti1.xform_codes.value_set():
      raise BadInputError(f'NIfTI {field} {int(header[field])} is not a NIfTI '
                          'transform code (0..5)', path)
  slope, inter = float(header['scl_slope']), float(header['scl_inter'])
  if np.isfinite(slope) and slope != 0 and not np.isfinite(inter):
    raise BadInputError(f'NIfTI scl_inter is {inter} (with scl_slope {slope})', path)
  _check_transforms(header, path)
  try:
    header.get_xyzt_units()
  except KeyError:
    raise BadInputError(f'NIfTI xyzt_units {int(header["xyzt_units"])} holds an unknown '
                        'unit code', path) from None
  return header, shape, header.get_data_dtype(), offset


def _parse(raw, path):
  for size, klass in _NIFTI_KINDS.items():
    for endian, order in (('<', 'little'), ('>', 'big')):
      if len(raw) >= 4 and int.from_bytes(raw[:4], order) == size:
        if len(raw) < size:
          raise BadInputError(f'unreadable NIfTI: the file ends inside its {size}-byte '
                              f'header ({len(raw)} bytes)', path)
        header = klass(raw[:size], endianness=endian, check=False)
        magic = header['magic'].item()
        if magic == klass.pair_magic:
          raise BadInputError(f'NIfTI magic {magic.decode()!r} is that of a .hdr/.img '
                              'pair; expected a single-file .nii '
                              f'({klass.single_magic.decode()!r})', path)
        if magic != klass.single_magic:
          raise BadInputError(f'unreadable NIfTI: magic {magic!r}, expected '
                              f'{klass.single_magic!r}', path)
        return header
  raise BadInputError('unreadable NIfTI: no NIfTI-1 or NIfTI-2 header (sizeof_hdr '
                      'is not 348 or 540)', path)


def _shape(header, path) -> tuple:
  dim = [int(d) for d in header['dim']]
  if not 1 <= dim[0] <= 7:
    raise BadInputError(f'NIfTI dim[0] is {dim[0]}; expected 1..7 (the number of '
                        'dimensions)', path)
  shape = tuple(dim[1:dim[0] + 1])
  if min(shape) < 1:
    raise BadInputError(f'NIfTI declares shape {shape}: an empty or negative axis', path)
  squeezed = shape
  while len(squeezed) > 3 and squeezed[-1] == 1:
    squeezed = squeezed[:-1]
  if len(squeezed) != 3:
    raise BadInputError(f'expected a 3-D volume, got shape {shape}', path)
  return squeezed


def _offset(header, path) -> int:
  offset, minimum = float(header['vox_offset']), int(header.single_vox_offset)
  if offset == 0:  # written by some tools for "right after the header"
    header['vox_offset'] = offset = minimum
  if not np.isfinite(offset) or offset < minimum:
    raise BadInputError(f'NIfTI vox_offset {offset:g} points inside the {minimum}-byte '
                        'header (or is not a number)', path)
  return int(offset)


def _check_transforms(header, path):
  """qform and sform (where their codes say they are used) and the affine in use."""
  pixdim = header['pixdim'].copy()
  if pixdim[0] not in (-1, 1):
    pixdim[0] = 1  # qfac: nibabel (and the NIfTI reference code) read 0 as 1
    header['pixdim'] = pixdim
  qcode, scode = int(header['qform_code']), int(header['sform_code'])
  if qcode or not scode:  # pixdim is part of the qform, and the fallback affine
    zooms = np.asarray(pixdim[1:4], np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
      raise BadInputError(f'NIfTI pixdim[1..3] (voxel size) is {zooms.tolist()}; '
                          'expected positive millimetres', path)
  if qcode:
    try:
      check_affine(header.get_qform(), 'NIfTI qform', path)
    except (nib.spatialimages.HeaderDataError, ValueError) as e:
      raise BadInputError(f'NIfTI qform quaternion is invalid ({e})', path) from None
  if scode:
    check_affine(header.get_sform(), 'NIfTI sform', path)
  check_affine(header.get_best_affine(), 'NIfTI affine', path)


def check_affine(affine, what: str, path):
  """A voxel -> mm affine must be finite, with a 3x3 part of full rank 3."""
  affine = np.asarray(affine, np.float64)
  if not np.all(np.isfinite(affine)):
    raise BadInputError(f'{what} has NaN/inf values', path)
  singular = np.linalg.svd(affine[:3, :3], compute_uv=False)
  rank = int(np.sum(singular > 1e-6 * singular.max())) if singular.max() > 0 else 0
  if rank < 3:
    raise BadInputError(f'{what} is degenerate (rank {rank} of 3): its voxels have no '
                        'volume', path)


def nifti_bytes(path, need: int, whole: bool = False, trailing: int = 0) -> bytearray:
  """The first `need` bytes of a NIfTI file, decompressed if it is gzip (by its
  magic, whatever its name). Fewer when the file is shorter: the caller says
  what was missing. `whole`: read a gzip stream on to its end, so that its
  CRC-32 and length are verified, refusing more than `trailing` bytes beyond
  `need` (a bound on decompressing a gzip bomb)."""
  with open(path, 'rb') as raw:
    compressed = raw.read(2) == b'\x1f\x8b'
    size = raw.seek(0, 2)
    if whole and not compressed and size < need:  # before allocating `need`
      raise _truncated(need, size, compressed, path)
    raw.seek(0)
    stream = gzip.GzipFile(fileobj=raw, mode='rb') if compressed else raw
    data, got = bytearray(need), 0
    try:
      while got < need:  # a gzip stream may return fewer bytes per call
        more = stream.readinto(memoryview(data)[got:])
        if not more:
          break
        got += more
      extra = 0
      while whole and compressed and extra <= trailing:
        chunk = stream.read(1 << 20)
        if not chunk:
          break
        extra += len(chunk)
    except EOFError:
      raise BadInputError('truncated .gz file (the compressed stream ends early)',
                          path) from None
    except (gzip.BadGzipFile, zlib.error) as e:
      raise BadInputError(f'corrupt .gz file ({e})', path) from None
  if whole and got < need:
    raise _truncated(need, got, compressed, path)
  if extra > trailing:
    raise BadInputError(f'NIfTI holds more than {trailing >> 20} MiB beyond the voxel '
                        'data its header declares', path)
  return data if got == need else data[:got]


def _truncated(need, got, compressed, path) -> BadInputError:
  return BadInputError(f'truncated NIfTI: the header declares {need} bytes, the '
                       f'{"decompressed " if compressed else ""}file holds {got}', path)


# ----------------------------------------------------------------------- DICOM
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

