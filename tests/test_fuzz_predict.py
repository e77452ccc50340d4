"""Fuzzing `mtl-jax predict`: mutated scans are refused in one line or predicted, never a bug.

A seeded corpus (SEED; 600 cases) of small valid inputs, each mutated once,
is written into tmp_path: 16x16x4 NIfTI volumes (.nii and .nii.gz), 16x16x4
DICOM series folders and 32x32 PNG/JPG slices. Every case runs in-process as
`mtl_jax.cli.main(['predict', ...])` with a tiny trained model whose apply is
replaced by a threshold (as in test_predict), and must end with:

  * exit status 0 or 2, never 1, and no 'Traceback' on stderr;
  * on 2: a last stderr line 'mtl-jax predict: error: ...' naming the input
    (its file or folder name), and no output folder;
  * on 0: a report.json in the output folder; for a byte-flipped input, a
    summary line that is qualified (QUALIFIERS: an inconclusive class, or
    figures marked not reliable), never a plain clinical answer.

The rule for which mutations MUST be refused (status 2): those that make the
file corrupt or unusable in a way the format lets us see --
  * truncation at any offset (NIfTI, DICOM slice, PNG, JPG): the file holds less
    than its header declares, or lacks its end marker (PNG IEND, JPEG EOI);
  * any byte changed in a PNG (chunk CRCs, an intact IEND), and any byte of a
    .nii.gz after its 10-byte gzip header inverted (deflate data, CRC-32 and
    length are verified; all 8 bits, since the last deflate byte may hold
    unused padding bits);
  * a header field set to a known-invalid value (dim[0] not 1..7, an empty or
    too long axis, an unknown/complex/RGB datatype, vox_offset inside the header
    or beyond the file, a NaN/inf/degenerate sform or qform, NaN/0 pixdim under
    a qform, an unknown xform or unit code, a finite slope with a NaN intercept,
    a slope overflowing float32), and declared sizes beyond the limits (image
    or volume side, megapixels, bytes);
  * a required DICOM tag deleted, a numeric DICOM tag made non-numeric, empty,
    non-finite or of the wrong length, a missing or duplicated slice, or a stray
    non-DICOM .dcm file in the series.
Mutations that MAY succeed (status 0 or 2) are those a reader cannot tell
from a real scan: a byte changed in a .nii, a DICOM file or a JPG (no
checksums), in the gzip header (MTIME, OS), and header fields or DICOM tags set
to other plausible values (a NaN/inf/0 scl_slope means "no scaling" in NIfTI).
Deterministic: one seed, no time or pid in a name; MTL_FUZZ_SEED=N explores
another corpus.
"""

import os
import pathlib
import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image

from mtl_jax import cli, predict
from test_input_validation import jpeg_with_size, nifti_bytes, png_bytes, set_dicom_text
from test_predict import fake_threshold_model, write_dicom_series

SEED = int(os.environ.get('MTL_FUZZ_SEED', '20240517'))
VOLUME_SHAPE = (16, 16, 4)
QUALIFIERS = ('inconclusive', 'not reliable')


@pytest.fixture(scope='module')
def fuzz_predictor(model_dir, predictor):
  """(workdir, predictor) of conftest's tiny trained model."""
  return model_dir, predictor


# ----------------------------------------------------------------- base inputs
def hu_volume(rng) -> np.ndarray:
  """int16 HU (X, Y, Z): air, a body, two lungs, noise."""
  vol = np.full(VOLUME_SHAPE, -1000, np.int16)
  vol[2:14, 3:13] = 40
  vol[3:7, 5:11], vol[9:13, 5:11] = -850, -850
  return (vol + rng.integers(-20, 20, VOLUME_SHAPE)).astype(np.int16)


def slice_8bit(rng) -> np.ndarray:
  yy, xx = np.mgrid[:32, :32]
  img = np.where(((yy - 16) / 13) ** 2 + ((xx - 16) / 14) ** 2 < 1, 160, 15)
  return (img + rng.integers(0, 40, (32, 32))).astype(np.uint8)


class Corpus:
  """Writes mutated inputs; each case: (path, must_fail, description)."""

  def __init__(self, root, rng):
    self.root, self.rng, self.cases = pathlib.Path(root), rng, []

  def add(self, kind, suffix, data=None, must=False, what=''):
    path = self.root / f'case{len(self.cases):03d}_{kind}{suffix}'
    if data is not None:
      path.write_bytes(data)
    self.cases.append((path, must, f'{kind}: {what}'))
    return path

  def flip(self, data: bytes, mask=None):
    """data with one byte XORed with `mask` (random non-zero if None)."""
    offset = int(self.rng.integers(len(data)))
    out = bytearray(data)
    out[offset] ^= int(self.rng.integers(1, 256)) if mask is None else mask
    return bytes(out), offset

  def cut(self, data: bytes):
    at = int(self.rng.integers(0, len(data)))
    return data[:at], at


# Header fields -> values a reader must refuse, and values it may accept.
_BAD_NIFTI = [
    {'dim': [0, 16, 16, 4, 1, 1, 1, 1]}, {'dim': [8, 16, 16, 4, 1, 1, 1, 1]},
    {'dim': [9, 16, 16, 4, 1, 1, 1, 1]}, {'dim': [-3, 16, 16, 4, 1, 1, 1, 1]},
    {'dim': [3, 16, 0, 4, 1, 1, 1, 1]}, {'dim': [3, 16, -16, 4, 1, 1, 1, 1]},
    {'dim': [3, 16, 16, 8, 1, 1, 1, 1]}, {'dim': [4, 16, 16, 4, 2, 1, 1, 1]},
    {'dim': [3, 5000, 16, 4, 1, 1, 1, 1]}, {'dim': [3, 4096, 4096, 64, 1, 1, 1, 1]},
    {'dim': [3, 32767, 32767, 32767, 1, 1, 1, 1]}, {'datatype': 0}, {'datatype': 1},
    {'datatype': 32}, {'datatype': 128}, {'datatype': 999}, {'datatype': 1536},
    {'datatype': 1792}, {'datatype': 2304}, {'datatype': -4}, {'vox_offset': -100},
    {'vox_offset': 100}, {'vox_offset': 351}, {'vox_offset': np.nan},
    {'vox_offset': np.inf}, {'vox_offset': 1e9}, {'vox_offset': 1e30},
    {'srow_x': [np.nan, 0, 0, 0]},
    {'srow_y': [0, 1, 0, np.inf]}, {'srow_x': [0] * 4, 'srow_y': [0] * 4, 'srow_z': [0] * 4},
    {'srow_z': [1.5, 0, 0, 0]}, {'sform_code': 0, 'qform_code': 1, 'qoffset_y': np.nan},
    {'sform_code': 0, 'qform_code': 1, 'pixdim': [1, 0, 1, 1, 1, 1, 1, 1]},
    {'sform_code': 0, 'qform_code': 1, 'pixdim': [1, np.nan, 1, 1, 1, 1, 1, 1]},
    {'sform_code': 0, 'qform_code': 1, 'quatern_b': 0.9, 'quatern_c': 0.9},
    {'sform_code': 0, 'qform_code': 0, 'pixdim': [1, 0, 0, 0, 1, 1, 1, 1]},
    {'sform_code': 77}, {'qform_code': -1}, {'scl_slope': 1.0, 'scl_inter': np.nan},
    {'scl_slope': 1e38}, {'sizeof_hdr': 0}, {'xyzt_units': 72},
    {'magic': b'xyz'}, {'magic': b'ni1'},
]
_PLAUSIBLE_NIFTI = [
    {'dim': [3, 8, 8, 2, 1, 1, 1, 1]}, {'dim': [4, 16, 16, 4, 1, 1, 1, 1]},
    {'datatype': 2}, {'datatype': 16}, {'datatype': 512}, {'vox_offset': 0},
    {'vox_offset': 368}, {'pixdim': [0, 0.5, 0.5, 3, 1, 1, 1, 1]},
    {'pixdim': [-1, 2, 2, 2, 0, 0, 0, 0]}, {'qform_code': 1}, {'sform_code': 0},
    {'sform_code': 0, 'qform_code': 0}, {'scl_slope': 2.0, 'scl_inter': -1000},
    {'scl_slope': 0.0}, {'scl_slope': np.nan}, {'scl_slope': np.inf},  # = no scaling
    {'xyzt_units': 0}, {'cal_max': np.nan},
]


def nifti_cases(corpus: Corpus, gz: bool, flips: int, cuts: int, fields: int):
  rng, suffix = corpus.rng, '.nii.gz' if gz else '.nii'
  kind = 'niigz' if gz else 'nii'
  base = nifti_bytes(hu_volume(rng), affine=np.diag([1.5, 1.5, 5.0, 1.0]), gz=gz)
  for _ in range(flips):  # gzip: all 8 bits, as each deflate byte has a bit in use
    data, offset = corpus.flip(base, 0xFF if gz else None)
    corpus.add(kind + '_flip', suffix, data, must=gz and offset >= 10, what=f'byte {offset}')
  for _ in range(cuts):
    data, at = corpus.cut(base)
    corpus.add(kind + '_cut', suffix, data, must=True, what=f'cut at {at}')
  for i in range(fields):
    bad = i % 3 != 2
    table = _BAD_NIFTI if bad else _PLAUSIBLE_NIFTI
    change = table[int(rng.integers(len(table)))]
    corpus.add(kind + '_field', suffix, nifti_bytes(hu_volume(rng), gz=gz, **change),
               must=bad, what=str(change))


_REQUIRED_TAGS = ('ImagePositionPatient', 'ImageOrientationPatient', 'PixelSpacing',
                  'PixelData', 'Rows', 'Columns', 'BitsAllocated', 'BitsStored',
                  'PixelRepresentation', 'SamplesPerPixel', 'PhotometricInterpretation',
                  'SeriesInstanceUID', 'Modality')
_OPTIONAL_TAGS = ('RescaleSlope', 'RescaleIntercept', 'SliceThickness', 'StudyInstanceUID',
                  'SOPInstanceUID')
_NUMERIC_TAGS = ('ImagePositionPatient', 'ImageOrientationPatient', 'PixelSpacing',
                 'RescaleSlope', 'RescaleIntercept')
_GARBAGE = (b'abc', b'', b'nan', b'1e999', b'1\\2', b'\xff\xfe\x00\x01', b'--', b'0x10')
_BAD_VALUES = [('ImageOrientationPatient', [0] * 6),
               ('ImageOrientationPatient', [1, 0, 0, 1, 0, 0]),
               ('ImageOrientationPatient', [2, 0, 0, 0, 1, 0]), ('PixelSpacing', [0, 0]),
               ('PixelSpacing', [0.7]), ('PixelSpacing', [-1, 0.7]), ('Rows', 5000),
               ('Columns', 0), ('BitsAllocated', 12), ('BitsStored', 20),
               ('SamplesPerPixel', 3), ('PhotometricInterpretation', 'RGB'),
               ('Modality', 'MR'), ('RescaleSlope', 0), ('NumberOfFrames', 3),
               ('PixelData', b''), ('PixelData', b'\0' * 30)]
_PLAUSIBLE_VALUES = [('RescaleSlope', 2), ('RescaleIntercept', 0), ('SliceThickness', 9),
                     ('PixelSpacing', [0.5, 2.0]), ('PatientName', 'x' * 60),
                     ('ImageOrientationPatient', [0.999999, 0, 0, 0, 1, 0.000001])]


def dicom_cases(corpus: Corpus, n: int):
  rng = corpus.rng
  for i in range(n):
    folder = corpus.add('dicom', '')
    vol = hu_volume(rng)
    write_dicom_series(folder, [vol[::-1, ::-1, k].T for k in range(4)], (0.8, 0.8), 3.0,
                       (-5.0, 3.0, 10.0), series_uid=f'1.2.826.0.1.3680043.2.1125.{i + 1}')
    files = sorted(folder.iterdir())
    target = files[int(rng.integers(len(files)))]
    op = ('flip', 'cut', 'delete', 'delete', 'garbage', 'garbage', 'value', 'value',
          'plausible', 'structure')[i % 10]
    must, what = True, op
    if op == 'flip':
      data, offset = corpus.flip(target.read_bytes())
      target.write_bytes(data)
      must, what = False, f'{target.name} byte {offset}'
    elif op == 'cut':
      data, at = corpus.cut(target.read_bytes())
      target.write_bytes(data)
      what = f'{target.name} cut at {at}'
    elif op in ('delete', 'value', 'plausible'):
      ds = pydicom.dcmread(target)
      if op == 'delete':
        optional = rng.random() < 0.25
        keyword = rng.choice(_OPTIONAL_TAGS if optional else _REQUIRED_TAGS)
        delattr(ds, str(keyword))
        must, what = not optional, f'{target.name} without {keyword}'
      else:
        table = _BAD_VALUES if op == 'value' else _PLAUSIBLE_VALUES
        keyword, value = table[int(rng.integers(len(table)))]
        setattr(ds, keyword, value)
        must, what = op == 'value', f'{target.name} {keyword}={value!r}'
      ds.save_as(target)
    elif op == 'garbage':
      keyword = str(rng.choice(_NUMERIC_TAGS))
      junk = _GARBAGE[int(rng.integers(len(_GARBAGE)))]
      set_dicom_text(target, keyword, junk)
      what = f'{target.name} {keyword}={junk!r}'
    else:
      change = int(rng.integers(3))
      if change == 0:  # an inner slice missing: uneven spacing
        files.sort(key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
        files[1].unlink()
      elif change == 1:
        shutil.copy(files[2], folder / 'copy.dcm')  # a duplicated slice position
      else:
        (folder / 'junk.dcm').write_bytes(rng.bytes(300))
      what = ('missing slice', 'duplicate slice', 'junk .dcm')[change]
    corpus.cases[-1] = (folder, must, f'dicom: {what}')


def image_cases(corpus: Corpus, fmt: str, flips: int, cuts: int):
  rng, suffix = corpus.rng, '.' + fmt
  buffer = corpus.root / f'base{suffix}'
  Image.fromarray(slice_8bit(rng)).save(buffer, **({'quality': 90} if fmt == 'jpg' else {}))
  base = buffer.read_bytes()
  buffer.unlink()
  for _ in range(flips):
    data, offset = corpus.flip(base)
    corpus.add(fmt + '_flip', suffix, data, must=fmt == 'png', what=f'byte {offset}')
  for _ in range(cuts):
    data, at = corpus.cut(base)
    corpus.add(fmt + '_cut', suffix, data, must=True, what=f'cut at {at}')
  for width, height in ((12000, 12000), (4097, 32), (5000, 4000), (8, 8), (1, 40)):
    path = corpus.add(fmt + '_size', suffix, what=f'declares {width}x{height}')
    if fmt == 'png':
      path.write_bytes(png_bytes(width, height, b'\0' * 64))
    else:
      jpeg_with_size(path, width, height)
    corpus.cases[-1] = (path, True, corpus.cases[-1][2])
  corpus.add(fmt + '_random', suffix, rng.bytes(500), must=True, what='random bytes')


def build_corpus(root) -> list:
  rng = np.random.default_rng(SEED)
  corpus = Corpus(root, rng)
  nifti_cases(corpus, gz=False, flips=80, cuts=20, fields=60)
  nifti_cases(corpus, gz=True, flips=80, cuts=20, fields=60)
  dicom_cases(corpus, 128)
  image_cases(corpus, 'png', flips=50, cuts=20)
  image_cases(corpus, 'jpg', flips=50, cuts=20)
  return corpus.cases


# ----------------------------------------------------------------------- test
def test_fuzzed_inputs_refused_in_one_line_or_predicted(fuzz_predictor, monkeypatch,
                                                        tmp_path, capsys):
  workdir, predictor = fuzz_predictor
  monkeypatch.setattr(predictor, 'predict_batch', fake_threshold_model(predictor, -500))
  monkeypatch.setattr(predict, 'Predictor', lambda *args, **kwargs: predictor)
  (tmp_path / 'in').mkdir()
  cases = build_corpus(tmp_path / 'in')
  assert len(cases) == 600
  failures, outcomes = [], {0: 0, 2: 0}
  for i, (path, must_fail, what) in enumerate(cases):
    out = tmp_path / 'out' / f'{i:03d}'
    code = cli.main(['predict', '--workdir', workdir, '--input', str(path),
                     '--output', str(out)])
    captured = capsys.readouterr()
    err = captured.err
    lines = err.strip().splitlines()
    problem = None
    if code not in (0, 2) or 'Traceback' in err:
      problem = f'status {code}: {err.strip()[-600:]}'
    elif code == 2 and not (lines and lines[-1].startswith('mtl-jax predict: error: ')
                            and path.name in lines[-1]):
      problem = f'error line does not name the input: {lines[-1:]}'
    elif code == 2 and out.exists():
      problem = 'output folder written despite the error'
    elif code == 0 and must_fail:
      problem = 'corrupt input got a report'
    elif code == 0 and not (out / 'report.json').exists():
      problem = 'status 0 without report.json'
    elif code == 0 and ('flip' in what or ' byte ' in what) and not any(
        q in captured.out for q in QUALIFIERS):
      problem = f'byte-flipped input got an unqualified clinical line: {captured.out.strip()}'
    if problem:
      failures.append(f'{path.name} ({what}): {problem}')
    outcomes[code] = outcomes.get(code, 0) + 1
  leftovers = [p.name for p in (tmp_path / 'out').iterdir() if p.name.startswith('.')]
  assert not leftovers, leftovers
  assert not failures, f'{len(failures)} of {len(cases)} cases:\n' + '\n'.join(failures)
  assert outcomes[0] > 30 and outcomes[2] > 150, outcomes  # the corpus tests both ways
