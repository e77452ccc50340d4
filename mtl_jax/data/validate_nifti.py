"""Is a NIfTI header well-formed? Checked before any voxel is read.

nibabel accepts many malformed files and then fails deep inside, with
messages about its own internals (a MemoryError for a header that declares
32767^3 voxels), or does not fail at all: complex voxels silently lose their
imaginary part, a NaN or rank-deficient affine reaches the reorientation
code. Each check here names the header field and what is wrong with it, as a
`BadInputError`, so a reader refuses the file in one line before allocating
anything. `check_affine` also checks a DICOM series' affine (`validate_dicom`).

This module checks FORM only. What mtl-jax is willing to allocate and which
voxel sizes are plausible (the limits) are `readers`' constants and checks,
so that every limit lives in one place.
"""

from __future__ import annotations

import gzip
import zlib

import nibabel as nib
import numpy as np

from mtl_jax.errors import BadInputError

# Real-valued NIfTI data types (code -> name). Complex, RGB, binary, float128
# and unknown codes are refused: a CT voxel is one real number.
REAL_NIFTI_TYPES = {2: 'uint8', 4: 'int16', 8: 'int32', 16: 'float32', 64: 'float64',
                    256: 'int8', 512: 'uint16', 768: 'uint32', 1024: 'int64',
                    1280: 'uint64'}
_NIFTI_KINDS = {348: nib.Nifti1Header, 540: nib.Nifti2Header}  # sizeof_hdr -> header


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
