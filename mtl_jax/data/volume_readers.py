"""Reading CT volumes: NIfTI files and DICOM series, in canonical RAS orientation.

Volumes come back in canonical RAS orientation; `axial_slices` turns them
into radiological display order (anterior up, patient right on the image
left). Like every reader in `readers`, each function here returns clean
arrays or raises `BadInputError(reason, path)`.

Split from `readers` (2-D slices and masks, `BadFiles`, and the limits):
header fields and DICOM tags are checked for form by `validate_nifti` and
`validate_dicom`, sizes against the limits in `readers` (their one home),
before any voxel is decoded. nibabel and pydicom are imported on first use.
"""

from __future__ import annotations

import io
import pathlib

import numpy as np

from mtl_jax.data import readers
from mtl_jax.errors import BadInputError


def _volume_checks(data, path) -> np.ndarray:
  while data.ndim > 3 and data.shape[-1] == 1:
    data = data[..., 0]
  if data.ndim != 3:
    raise BadInputError(f'expected a 3-D volume, got shape {data.shape}', path)
  if min(data.shape) < 1 or not np.all(np.isfinite(data)):
    raise BadInputError('volume is empty or has NaN/inf values', path)
  return data


def canonical(data, affine, path):
  """(data, spacing, affine) in the closest canonical RAS orientation; the
  spacing is the canonical affine's column lengths, checked to be plausible."""
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  image = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
  spacing = np.linalg.norm(image.affine[:3, :3], axis=0).astype(np.float32)
  readers.check_spacing(spacing, path)
  return np.asarray(image.dataobj, np.float32), spacing, image.affine


def nifti_header(path):
  """(header, shape, dtype, offset) of a NIfTI file from its header alone, checked
  for form (`validate_nifti.nifti_header`) and size (`readers.check_volume_size`)."""
  from mtl_jax.data import validate_nifti  # pylint: disable=g-import-not-at-top
  path = readers.require_file(path)
  header, shape, dtype, offset = validate_nifti.nifti_header(
      validate_nifti.nifti_bytes(path, 540), path)
  if offset > readers.MAX_EXTRA_BYTES:
    raise BadInputError(f'NIfTI vox_offset {offset} puts the voxels more than '
                        f'{readers.MAX_EXTRA_BYTES >> 20} MiB after the header', path)
  readers.check_volume_size(shape, path)
  return header, shape, dtype, offset


def load_nifti(path):
  """(checked nibabel header, voxels float32 (X, Y, Z) in the file's own axis order);
  the header's get_best_affine() maps those voxels to millimetres.

  In order: the header is checked and the declared size capped (nothing read
  yet); then the whole file is read, a .nii.gz decompressed to its end so
  that its CRC-32 and length are verified; a file shorter than its header
  declares is refused; last, the voxels must be finite.
  """
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  from mtl_jax.data import validate_nifti  # pylint: disable=g-import-not-at-top
  header, _, dtype, offset = nifti_header(path)
  need = offset + int(np.prod(header.get_data_shape(), dtype=object)) * dtype.itemsize
  data = validate_nifti.nifti_bytes(path, need, whole=True,
                                    trailing=readers.MAX_EXTRA_BYTES)
  # A bare ArrayProxy, not a nibabel image: building an image re-runs nibabel's
  # header repairs on a copy (and logs them), so it would not be what was checked.
  proxy = nib.arrayproxy.ArrayProxy(io.BytesIO(data), header)
  return header, _volume_checks(np.asarray(proxy, dtype=np.float32), path)


def read_nifti(path):
  """(data float32 (X, Y, Z) in RAS, spacing (3,) mm, affine) of a NIfTI file."""
  header, voxels = load_nifti(path)
  return canonical(voxels, header.get_best_affine(), path)


def problems_error(what: str, problems: list, where) -> BadInputError:
  """One error listing per-file problems ('name: reason'), the first ten of them."""
  shown = problems[:10] + ([f'and {len(problems) - 10} more'] if len(problems) > 10 else [])
  return BadInputError(f'{what}: {"; ".join(shown)}', where)


def read_dicom_series(folder):
  """(HU float32 (X, Y, Z) in RAS, spacing, affine) of a folder of CT DICOM slices."""
  folder = readers.require_file(folder)
  files = [f for f in sorted(folder.iterdir()) if not f.name.startswith('.')
           and (f.is_file() or f.is_symlink())]
  return read_dicom_files(files, folder)


def read_dicom_files(files, where):
  """(HU float32 (X, Y, Z) in RAS, spacing, affine) of one series' CT slice files.

  Every file is checked (`validate_dicom.dicom_geometry`) and problems of all
  files are reported together, naming each file and tag. The study size (Rows
  x Columns x number of files) is capped before any pixel is decoded. Slices
  are sorted by ImagePositionPatient along the slice normal
  (`validate_dicom.dicom_series_affine`); pixel data is rescaled to HU with
  RescaleSlope/RescaleIntercept.
  """
  from mtl_jax.data import validate_dicom  # pylint: disable=g-import-not-at-top
  if not files:
    raise BadInputError('DICOM series folder is empty', where)
  slices, problems = [], []
  for f in files:
    try:
      ds = validate_dicom.dicom_file(readers.require_file(f))
      geometry = validate_dicom.dicom_geometry(ds, f)
    except BadInputError as e:
      problems.append(f'{pathlib.Path(f).name}: {e.reason}')
      continue
    readers.check_volume_size((geometry['columns'], geometry['rows'], len(files)), f,
                              'series (Columns x Rows x files)')  # the whole study: stop now
    try:
      slices.append((geometry, validate_dicom.dicom_hu(ds, geometry, f)))
    except BadInputError as e:
      problems.append(f'{pathlib.Path(f).name}: {e.reason}')
  if problems:
    raise problems_error('bad DICOM files', problems, where)
  order, affine = validate_dicom.dicom_series_affine([g for g, _ in slices], where)
  data = _volume_checks(np.stack([slices[k][1].T for k in order], axis=-1), where)
  return canonical(data, affine, where)


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
