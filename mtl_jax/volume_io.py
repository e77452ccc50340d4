"""Inputs and outputs of `mtl-jax predict`: find, read and validate studies, write results.

One study is a NIfTI volume (.nii/.nii.gz), a DICOM series (a folder, or one
.dcm file), or a 2-D PNG/JPG slice. `discover` also accepts a folder of such
inputs or a CSV with columns `input[,mask]` (batch mode: one output folder
each). A folder holding DICOM files beside images or volumes is refused, not
guessed at: predicting the images would silently drop the series. Reading
reuses `mtl_jax.data.readers` and `volume_readers` (the dataset builders'
readers), so prediction sees volumes exactly as training did: canonical RAS
order, HU from RescaleSlope/Intercept, colour photographs refused.

Added here (readers has no such functions): picking one series out of a
folder holding several (the CT series with the most slices, or `--series
UID`), remembering the input's own orientation so that outputs are written
back in the INPUT's geometry, and staging the output folder so that a failed
run leaves it untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pathlib
import shutil
import tempfile

import numpy as np
from PIL import Image

from mtl_jax import jsonio
from mtl_jax.data import readers, tables, validate_dicom, volume_readers
from mtl_jax.errors import BadInputError, InputNotFoundError

MARKERS = ('report.json', 'batch_summary.json')  # an earlier predict output
EXPECTED = ('expected a .nii/.nii.gz volume, a DICOM series folder or .dcm file, '
            'a .png/.jpg slice, a folder of these, or a .csv with an input column')


@dataclasses.dataclass
class Item:
  """One study to predict: its input, its output sub-folder name, an optional mask."""
  input: pathlib.Path
  name: str
  mask: pathlib.Path | None = None


@dataclasses.dataclass
class Study:
  """A study in canonical RAS order (X, Y, Z); a 2-D image is (W, H, 1)."""
  path: str
  kind: str  # 'nifti', 'dicom' or 'image'
  volume: np.ndarray  # float32, HU or 0..255
  intensity: str  # 'hu' or '8bit'
  spacing: np.ndarray | None  # (3,) mm along X, Y, Z; None for 2-D images
  affine: np.ndarray | None  # canonical voxel -> RAS mm
  input_shape: tuple
  input_affine: np.ndarray | None
  to_input: np.ndarray | None  # nibabel ornt: canonical -> input axes
  sha256: str
  series_uid: str | None = None
  header: object = None  # the input NIfTI header (units, codes)

  @property
  def num_slices(self) -> int:
    return self.volume.shape[2]

  def slice(self, k: int, array=None) -> np.ndarray:
    """Axial slice k in display orientation (anterior up, patient right on the left)."""
    array = self.volume if array is None else array
    return array[:, :, k].T[::-1, ::-1]

  def put_slice(self, array, k: int, display: np.ndarray):
    array[:, :, k] = display[::-1, ::-1].T

  @property
  def voxel_ml(self) -> float | None:
    if self.affine is None:
      return None
    return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)


def _sha256(paths) -> str:
  h = hashlib.sha256()
  for path in paths:
    with open(path, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        h.update(block)
  return h.hexdigest()


def _exists(path, what='input') -> pathlib.Path:
  path = pathlib.Path(path)
  if path.is_symlink() and not path.exists():
    raise BadInputError(readers.BROKEN_LINK, path)
  if not path.exists():
    raise InputNotFoundError(path, what)
  return path


def _is_image(path) -> bool:
  return str(path).lower().endswith(readers.IMAGE_SUFFIXES)


def _unique_names(paths) -> list:
  names, seen = [], {}
  for p in paths:
    base = readers.strip_suffix(pathlib.Path(p).name) or 'input'
    seen[base] = seen.get(base, 0) + 1
    names.append(base if seen[base] == 1 else f'{base}_{seen[base]}')
  return names


def discover(path) -> tuple[bool, list]:
  """(batch, items) for an input path; raises a one-line error when unusable."""
  path = _exists(path)
  if path.is_file() and path.suffix.lower() == '.csv':
    return True, _csv_items(path)
  if path.is_dir():
    entries = [e for e in sorted(path.iterdir()) if not e.name.startswith('.')]
    if not entries:
      raise BadInputError(f'empty folder ({EXPECTED})', path)
    inputs = [e for e in entries if e.is_dir() or readers.is_nifti(e) or _is_image(e)]
    if not inputs:  # only plain files: one DICOM series
      return False, [Item(path, path.name)]
    dicom = [e for e in entries if e not in inputs and validate_dicom.looks_like_dicom(e)]
    if dicom:  # which one did the user mean? Never drop a series silently.
      raise BadInputError(f'folder mixes {_count(len(dicom), "DICOM file")} and '
                          f'{_kinds(inputs)}; give one series folder, or a folder of '
                          'only .nii/.png inputs (or series sub-folders) for a batch', path)
    return True, [Item(p, n) for p, n in zip(inputs, _unique_names(inputs))]
  return False, [Item(path, readers.strip_suffix(path.name))]


def _count(n: int, what: str) -> str:
  return f'{n} {what}{"s" if n != 1 else ""}'


def _kinds(inputs) -> str:
  """'1 PNG image and 2 NIfTI volumes': what a batch folder holds, by kind."""
  kinds = {}
  for entry in inputs:
    kind = ('folder' if entry.is_dir() else 'NIfTI volume' if readers.is_nifti(entry)
            else f'{entry.suffix[1:].upper()} image')
    kinds[kind] = kinds.get(kind, 0) + 1
  return ' and '.join(_count(n, kind) for kind, n in kinds.items())


def _csv_items(path) -> list:
  try:
    rows = tables.read_csv(path)
  except (UnicodeDecodeError, OSError) as e:
    raise BadInputError(f'unreadable CSV ({type(e).__name__})', path) from None
  if not rows or 'input' not in rows[0]:
    raise BadInputError('CSV needs a header with an "input" column (and '
                        'optionally "mask") and at least one row', path)
  items = []
  for i, row in enumerate(rows, start=2):
    value = (row.get('input') or '').strip()
    if not value:
      raise BadInputError(f'line {i}: empty input', path)
    image = _exists(path.parent / value, f'input (CSV {path.name} line {i})')
    mask = (row.get('mask') or '').strip()
    items.append(Item(image, '', _exists(path.parent / mask, f'mask (CSV {path.name} '
                                              f'line {i})') if mask else None))
  for item, name in zip(items, _unique_names([it.input for it in items])):
    item.name = name
  return items


def _raw_shape(path):
  """Shape of a NIfTI (trailing 1s dropped) or image (H, W) from its checked header;
  None: unknown (a DICOM series)."""
  path = pathlib.Path(path)
  if readers.is_nifti(path):
    return volume_readers.nifti_header(path)[1]
  if _is_image(path):
    return readers.image_shape(path)
  return None


def check_masks(items):
  """Before any work: every mask's shape must match its input's (header reads)."""
  for item in items:
    if item.mask is None:
      continue
    if not (readers.is_nifti(item.mask) or _is_image(item.mask)):
      raise BadInputError('mask must be a .nii/.nii.gz volume or a .png image',
                          item.mask)
    mask_shape, input_shape = _raw_shape(item.mask), _raw_shape(item.input)
    if input_shape is not None and mask_shape != input_shape:
      raise BadInputError(f'mask shape {mask_shape} does not match input '
                          f'{item.input.name} shape {input_shape}', item.mask)


def read_study(path, series: str | None = None) -> Study:
  """Read and validate one input (see module doc)."""
  path = _exists(path)
  if path.is_dir():
    return _read_dicom(path, sorted(f for f in path.iterdir() if not f.name.startswith('.')
                                    and (f.is_file() or f.is_symlink())), series)
  if readers.is_nifti(path):
    return _read_nifti(path)
  if _is_image(path):
    image = readers.read_image(path)  # (H, W) 0..255; refuses colour photographs
    volume = np.ascontiguousarray(image[::-1, ::-1].T)[:, :, None]
    return Study(str(path), 'image', volume, '8bit', None, None, image.shape, None,
                 None, _sha256([path]))
  if path.suffix.lower() in ('.csv', '.txt', '.json', '.md'):
    raise BadInputError(f'not an image or volume ({EXPECTED})', path)
  return _read_dicom(path, [path], series)


def _read_nifti(path) -> Study:
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  header, voxels = volume_readers.load_nifti(path)
  input_affine = header.get_best_affine()
  volume, spacing, affine = volume_readers.canonical(voxels, input_affine, path)
  del voxels
  ornt = nib.orientations.io_orientation(input_affine)
  to_input = nib.orientations.ornt_transform(
      nib.orientations.axcodes2ornt(('R', 'A', 'S')), ornt)
  return Study(str(path), 'nifti', volume, volume_readers.intensity_kind(volume, path),
               spacing, affine, tuple(header.get_data_shape()), input_affine,
               to_input, _sha256([path]), header=header)


def _read_dicom(path, files, series) -> Study:
  """One series: `series` if given, else the CT series with the most slices.

  Files that are not meant as DICOM (no .dcm name, no DICM marker: a README)
  are ignored; one that is meant as DICOM but cannot be read, or has no
  SeriesInstanceUID, is an error, since it may be a slice of the series.
  """
  if not files:
    raise BadInputError(f'empty DICOM folder ({EXPECTED})', path)
  by_series, modality, problems = {}, {}, {}
  for f in files:
    if f.exists() and not validate_dicom.looks_like_dicom(f):
      continue
    try:
      ds = validate_dicom.dicom_file(readers.require_file(f), header_only=True)
      if validate_dicom.is_dicomdir(ds):
        continue
      uid = validate_dicom.dicom_series_uid(ds, f)
      modality[uid] = validate_dicom.text(ds, 'Modality', f, required=False)
    except BadInputError as e:
      problems[f] = f'{f.name}: {e.reason}'
      continue
    by_series.setdefault(uid, []).append(f)
  if problems and not by_series:
    raise volume_readers.problems_error('bad DICOM files', list(problems.values()), path)
  if not by_series:
    raise BadInputError(f'not an image or volume: no DICOM image files ({EXPECTED})',
                        path)
  if series is not None:
    if series not in by_series:
      raise BadInputError(f'no series {series}; series here: '
                          f'{", ".join(sorted(by_series))}', path)
    uid = series
  else:
    ct = [u for u in by_series if modality[u] == 'CT']
    if not ct:
      raise BadInputError('Modality is ' + '/'.join(sorted(set(modality.values()))) +
                          ', not CT (no CT series here)', path)
    uid = max(ct, key=lambda u: (len(by_series[u]), u))
  if modality[uid] != 'CT':
    raise BadInputError(f'series {uid} has Modality {modality[uid]!r}, not CT', path)
  chosen = sorted(by_series[uid])
  # A file that could not be read may be a slice of this series: read it with
  # the series, so that its problem is reported together with any others.
  volume, spacing, affine = volume_readers.read_dicom_files(
      sorted(chosen + list(problems)), path)
  return Study(str(path), 'dicom', volume, 'hu', spacing, affine, volume.shape,
               affine, None, _sha256(chosen), series_uid=uid)


def read_mask_like(study: Study, path) -> np.ndarray:
  """A reference lesion mask (batch mode CSV) in the study's canonical order, 0/1."""
  path = pathlib.Path(path)
  if study.kind == 'image':
    mask = readers.read_mask(path)
    if mask.shape != study.input_shape:
      raise BadInputError(f'mask shape {mask.shape} does not match input shape '
                          f'{study.input_shape}', path)
    return (np.ascontiguousarray(mask[::-1, ::-1].T)[:, :, None] > 0).astype(np.uint8)
  data, _, affine = volume_readers.read_volume(path)
  if not volume_readers.same_geometry(data.shape, affine, study.volume.shape, study.affine):
    raise BadInputError(f'mask geometry {data.shape} does not match volume '
                        f'{study.volume.shape} (shape and affine must agree)', path)
  return (readers.map_labels(data, 'nonzero', path) > 0).astype(np.uint8)


def write_like_input(study: Study, canonical: np.ndarray, path_stem,
                     labels: bool = False) -> str:
  """Write a canonical-order array in the input's geometry; returns the file name.

  NIfTI input: the input's axis order, shape, affine (oblique, non-RAS) and
  units. DICOM input: NIfTI in canonical RAS with the series' affine. 2-D
  image: a PNG of the image's size (labels as palette indices, else 8-bit).
  """
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  if study.kind == 'image':
    name = f'{path_stem}.png'
    plane = np.ascontiguousarray(study.slice(0, canonical))
    image = Image.fromarray(plane)
    if labels:  # palette PNG: pixel values are the labels (readers.read_mask)
      image.putpalette([0, 0, 0, 255, 0, 0, 255, 255, 0] + [0] * (3 * 253))
    image.save(name)
    return os.path.basename(name)
  name = f'{path_stem}.nii.gz'
  if study.kind == 'dicom':
    nib.save(nib.Nifti1Image(canonical, study.affine), name)
    return os.path.basename(name)
  data = nib.orientations.apply_orientation(canonical, study.to_input)
  data = np.ascontiguousarray(data).reshape(study.input_shape)
  image = nib.Nifti1Image(data, study.input_affine)
  header = study.header  # keep the input's qform and sform exactly, with their codes
  qcode, scode = int(header['qform_code']), int(header['sform_code'])
  # A code 0 stays 0 (readers then fall back as they did for the input); its
  # matrix is the input's affine, so pixdim keeps the input's voxel sizes.
  image.set_qform(header.get_qform() if qcode else study.input_affine, code=qcode)
  image.set_sform(header.get_sform() if scode else study.input_affine, code=scode)
  image.header.set_xyzt_units(*header.get_xyzt_units())
  nib.save(image, name)
  return os.path.basename(name)


@contextlib.contextmanager
def staged_output(outdir):
  """Yield a temporary folder beside `outdir`; on success it replaces `outdir`.

  On any error the temporary folder is removed and `outdir` is exactly as it
  was. An existing `outdir` is replaced only if it is empty or an earlier
  predict output (holds report.json or batch_summary.json).
  """
  out = pathlib.Path(outdir).absolute()
  if out.exists() and not out.is_dir():
    raise BadInputError('output exists and is not a folder', out)
  if out.is_dir() and any(out.iterdir()) and not any(
      (out / m).exists() for m in MARKERS):
    raise BadInputError('output folder exists, is not empty and holds no earlier '
                        'mtl-jax predict output; choose another --output', out)
  created = []
  parent = out.parent
  while not parent.exists():
    created.append(parent)
    parent = parent.parent
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{out.name}.tmp-', dir=out.parent))
  try:
    yield tmp
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)
    jsonio.replace_dir(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in created:  # innermost first
      with contextlib.suppress(OSError):
        folder.rmdir()
    raise
