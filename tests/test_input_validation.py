"""Malformed scans get a one-line refusal naming the file and what is wrong.

Each test writes its own small inputs (NIfTI byte by byte, DICOM with
pydicom, PNG/JPG with PIL or by hand) and runs `mtl-jax predict` through the
CLI. Inputs are read before any model is built, so no model is needed: the
`refuse` fixture stubs the checkpoint, and an input that is wrongly accepted
reaches the stub and fails the test.
"""

import gzip
import os
import pathlib
import shutil
import struct
import zlib

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile

from mtl_jax import cli, predict, report, volume_io
from mtl_jax.data import readers
from mtl_jax.errors import BadInputError
from test_builders import _bad_lines, _build, _medseg_slices, _save
from test_predict import oblique_nifti, write_dicom_series

AFFINE = np.diag([0.8, 0.8, 2.0, 1.0])


# --------------------------------------------------------------------- inputs
def nifti_bytes(data=None, affine=AFFINE, gz=False, **fields) -> bytes:
  """A NIfTI-1 file's bytes with header `fields` overwritten as given (nib.save
  would re-derive qform/sform from the image's affine). gz: gzip, no file name."""
  data = np.full((16, 16, 4), -500, np.int16) if data is None else data
  raw = bytearray(nib.Nifti1Image(data, affine).to_bytes())
  header = nib.Nifti1Header(bytes(raw[:348]), check=False)
  for field, value in fields.items():
    header[field] = value
  raw[:348] = header.binaryblock
  return gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw)


def png_bytes(width, height, pixels=b'') -> bytes:
  """A grayscale PNG declaring `width` x `height`, with valid chunk CRCs."""
  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data)))
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height,
                                                             8, 0, 0, 0, 0)) +
          chunk(b'IDAT', zlib.compress(pixels)) + chunk(b'IEND', b''))


def jpeg_with_size(path, width, height):
  """A small JPEG whose SOF0 header is patched to declare width x height."""
  Image.fromarray(np.full((32, 32), 90, np.uint8)).save(path, quality=90)
  data = bytearray(path.read_bytes())
  sof = data.index(b'\xff\xc0')
  data[sof + 5:sof + 9] = struct.pack('>HH', height, width)
  path.write_bytes(bytes(data))
  return path


def dicom_series(folder, n=4, mutate=None, which=1):
  """A 16x16 CT series of n slices; `mutate(ds)` changes file number `which`."""
  write_dicom_series(folder, [np.full((16, 16), -500.0)] * n, (0.7, 0.7), 2.0, (0, 0, 0))
  files = sorted(pathlib.Path(folder).iterdir())
  if mutate is not None:
    ds = pydicom.dcmread(files[which])
    mutate(ds)
    ds.save_as(files[which])
  return files


def set_dicom_text(path, keyword, value: bytes):
  """Overwrite an explicit-VR element's value bytes in place (any garbage)."""
  tag = pydicom.tag.Tag(pydicom.datadict.tag_for_keyword(keyword))
  data = bytearray(pathlib.Path(path).read_bytes())
  at = data.index(struct.pack('<HH', tag.group, tag.element)) + 6
  length = struct.unpack('<H', data[at:at + 2])[0]
  data[at + 2:at + 2 + length] = value.ljust(length)[:length]
  pathlib.Path(path).write_bytes(bytes(data))


# --------------------------------------------------------------------- harness
@pytest.fixture
def refuse(monkeypatch, tmp_path, capsys):
  """check(path, *reasons): predict exits 2 with one line naming the file and each
  reason, and writes no output."""
  monkeypatch.setattr(predict, 'load_meta', lambda *args, **kwargs: ({}, ''))

  def no_model(*args, **kwargs):
    raise AssertionError('the input was accepted')
  monkeypatch.setattr(predict, 'Predictor', no_model)

  def check(path, *reasons, name=None):
    out = tmp_path / 'never' / 'out'
    code = cli.main(['predict', '--workdir', str(tmp_path), '--input', str(path),
                     '--output', str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith('mtl-jax predict: error: '), err
    assert (name or pathlib.Path(path).name) in err, err
    for reason in reasons:
      assert reason in err, err
    assert not (tmp_path / 'never').exists()
    return err
  return check


# ------------------------------------------------ 1. corrupt input accepted
def test_gzip_stream_is_verified_to_its_end(refuse, tmp_path):
  good = nifti_bytes(gz=True)
  (tmp_path / 'good.nii.gz').write_bytes(good)
  assert volume_io.read_study(tmp_path / 'good.nii.gz').volume.shape == (16, 16, 4)
  for name, offset in (('body', len(good) // 2), ('crc', len(good) - 6),
                       ('isize', len(good) - 2)):
    data = bytearray(good)
    data[offset] ^= 0xFF
    (tmp_path / f'{name}.nii.gz').write_bytes(bytes(data))
    refuse(tmp_path / f'{name}.nii.gz', 'corrupt .gz file')
  (tmp_path / 'short.nii.gz').write_bytes(good[:-20])
  refuse(tmp_path / 'short.nii.gz', 'truncated .gz file')


def test_truncated_nii_refused(refuse, tmp_path):
  (tmp_path / 'short.nii').write_bytes(nifti_bytes()[:-100])
  refuse(tmp_path / 'short.nii', 'truncated NIfTI', 'holds')


def test_damaged_or_truncated_slices_refused(refuse, tmp_path):
  Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 7, (32, 1))).save(tmp_path / 'a.png')
  png = (tmp_path / 'a.png').read_bytes()
  flipped = bytearray(png)
  flipped[png.index(b'IDAT') + 10] ^= 0x01  # one bit of the pixel data
  (tmp_path / 'flip.png').write_bytes(bytes(flipped))
  refuse(tmp_path / 'flip.png', 'unreadable image', 'checksum')
  (tmp_path / 'cut.png').write_bytes(png[:-1])  # PIL alone decodes this one
  refuse(tmp_path / 'cut.png', 'unreadable image: truncated PNG (its end marker is '
         'missing)')
  Image.fromarray(np.full((32, 32), 99, np.uint8)).save(tmp_path / 'a.jpg')
  (tmp_path / 'cut.jpg').write_bytes((tmp_path / 'a.jpg').read_bytes()[:-1])
  refuse(tmp_path / 'cut.jpg', 'truncated JPEG')
  # The format is judged by content: a JPEG named .png (UCSD has such) is fine.
  shutil.copy(tmp_path / 'a.jpg', tmp_path / 'really_a_jpeg.png')
  assert readers.read_image(tmp_path / 'really_a_jpeg.png').shape == (32, 32)


def test_truncated_dicom_slice_is_not_another_series(refuse, tmp_path):
  """A file cut inside its SeriesInstanceUID would read as a one-slice series
  of its own (pydicom keeps the short value), and the rest would be predicted."""
  files = dicom_series(tmp_path / 'series')
  data = files[2].read_bytes()
  uid = data.index(struct.pack('<HH', 0x0020, 0x000E) + b'UI') + 8
  files[2].write_bytes(data[:uid + 5])
  refuse(tmp_path / 'series', 'IM0002.dcm: truncated DICOM: element (0020,000E) runs '
         'past the end of the file')


def test_folder_mixing_dicom_and_images_is_an_error(refuse, tmp_path):
  folder = tmp_path / 'series'
  dicom_series(folder)
  Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / 'stray.png')
  refuse(folder, 'folder mixes 4 DICOM files and 1 PNG image', 'one series folder')
  # Only images, volumes and series sub-folders: still a batch.
  batch = tmp_path / 'batch'
  dicom_series(batch / 'patient1')
  Image.fromarray(np.zeros((32, 32), np.uint8)).save(batch / 'a.png')
  (batch / 'b.nii.gz').write_bytes(nifti_bytes(gz=True))
  (batch / 'notes.txt').write_text('not DICOM, not data')
  is_batch, items = volume_io.discover(batch)
  assert is_batch and [i.name for i in items] == ['a', 'b', 'patient1']


@pytest.mark.parametrize('fields,reason', [
    ({'srow_x': [0.8, 0, 0, np.nan]}, 'NIfTI sform has NaN/inf values'),
    ({'srow_y': [0, 0.8, 0, np.inf]}, 'NIfTI sform has NaN/inf values'),
    ({'qform_code': 1, 'sform_code': 0, 'qoffset_x': np.nan}, 'NIfTI qform has NaN/inf'),
    ({'qform_code': 1, 'qoffset_z': -np.inf}, 'NIfTI qform has NaN/inf values'),
])
def test_non_finite_transform_refused(refuse, tmp_path, fields, reason):
  (tmp_path / 'v.nii').write_bytes(nifti_bytes(**fields))
  refuse(tmp_path / 'v.nii', reason)


def test_complex_nifti_refused(refuse, tmp_path):
  data = np.full((16, 16, 4), -500 + 3j, np.complex64)
  (tmp_path / 'c.nii.gz').write_bytes(nifti_bytes(data, gz=True))
  refuse(tmp_path / 'c.nii.gz', 'datatype 32 (complex64) is not supported', 'real numbers')


# ---------------------------------------- 2. tracebacks instead of one line
def _rgb():
  return np.zeros((16, 16, 4), [('R', 'u1'), ('G', 'u1'), ('B', 'u1')])


@pytest.mark.parametrize('case,fields,reason', [
    ('rgb24', {'data': _rgb()}, 'datatype 128 (RGB) is not supported'),
    ('zero_affine', {'srow_x': [0] * 4, 'srow_y': [0] * 4, 'srow_z': [0] * 4},
     'NIfTI sform is degenerate (rank 0 of 3)'),
    ('rank2_affine', {'srow_z': [0.8, 0, 0, 0]}, 'NIfTI sform is degenerate (rank 2 of 3)'),
    ('dims_10000', {'dim': [3, 10000, 10000, 10000, 1, 1, 1, 1]}, 'longer than 4096'),
    ('dims_32767', {'dim': [3, 32767, 32767, 32767, 1, 1, 1, 1]}, 'longer than 4096'),
    ('datatype_999', {'datatype': 999}, 'datatype 999 is not a NIfTI data type'),
    ('vox_offset_neg', {'vox_offset': -100}, 'vox_offset -100 points inside'),
    ('dim0_9', {'dim': [9, 16, 16, 4, 1, 1, 1, 1]}, 'dim[0] is 9; expected 1..7'),
    ('dim0_neg', {'dim': [-3, 16, 16, 4, 1, 1, 1, 1]}, 'dim[0] is -3; expected 1..7'),
    ('pixdim_zero', {'qform_code': 1, 'sform_code': 0, 'pixdim': [1, 0, 0, 0, 1, 1, 1, 1]},
     'pixdim[1..3] (voxel size) is [0.0, 0.0, 0.0]'),
    ('not_nifti', {'sizeof_hdr': 1234}, 'unreadable NIfTI: no NIfTI-1 or NIfTI-2 header'),
])
def test_malformed_nifti_header_one_line(refuse, tmp_path, case, fields, reason):
  for gz in (False, True):
    path = tmp_path / f'{case}.nii{".gz" if gz else ""}'
    path.write_bytes(nifti_bytes(gz=gz, **fields))
    refuse(path, reason)


@pytest.mark.parametrize('mutate,reason', [
    (lambda ds: setattr(ds, 'ImageOrientationPatient', [0] * 6),
     'IM0001.dcm: ImageOrientationPatient (0020,0037) is 0\\0\\0\\0\\0\\0: the row '
     'direction has length 0, not 1'),
    (lambda ds: setattr(ds, 'ImageOrientationPatient', [1, 0, 0, 1, 0, 0]),
     'row and column directions are not orthogonal'),
    (lambda ds: setattr(ds, 'PixelSpacing', [0, 0]),
     'IM0001.dcm: PixelSpacing (0028,0030) is 0\\0; expected two positive values'),
    (lambda ds: setattr(ds, 'PixelSpacing', [0.7]),
     'IM0001.dcm: PixelSpacing (0028,0030) has 1 value (0.7); expected 2'),
    (lambda ds: setattr(ds, 'Rows', 5000), 'an axis longer than 4096'),
])
def test_malformed_dicom_geometry_one_line(refuse, tmp_path, mutate, reason):
  dicom_series(tmp_path / 'series', mutate=mutate)
  refuse(tmp_path / 'series', reason)


# ----------------------------------------------------------- 3. messages
@pytest.mark.parametrize('keyword', ['ImagePositionPatient', 'ImageOrientationPatient',
                                     'PixelSpacing', 'PixelData', 'Rows'])
def test_missing_dicom_tag_names_file_and_tag(refuse, tmp_path, keyword):
  dicom_series(tmp_path / 'series', mutate=lambda ds: delattr(ds, keyword), which=2)
  tag = pydicom.tag.Tag(pydicom.datadict.tag_for_keyword(keyword))
  err = refuse(tmp_path / 'series', f'IM0002.dcm: missing DICOM tag {keyword} {tag}')
  assert 'AttributeError' not in err and 'FileDataset' not in err


def test_non_numeric_rescale_slope_names_tag_and_value(refuse, tmp_path):
  files = dicom_series(tmp_path / 'series')
  set_dicom_text(files[3], 'RescaleSlope', b'abc')
  err = refuse(tmp_path / 'series', "IM0003.dcm: RescaleSlope (0028,1053) is 'abc', "
               'not a number')
  assert 'could not convert' not in err


def test_empty_or_short_pixel_data(refuse, tmp_path):
  dicom_series(tmp_path / 'empty', mutate=lambda ds: setattr(ds, 'PixelData', b''))
  refuse(tmp_path / 'empty', 'IM0001.dcm: PixelData (7FE0,0010) is empty')
  dicom_series(tmp_path / 'short', mutate=lambda ds: setattr(ds, 'PixelData', b'\0' * 100))
  refuse(tmp_path / 'short', 'IM0001.dcm: PixelData (7FE0,0010) holds 100 bytes',
         'need 512')


def test_problems_of_all_dicom_files_in_one_line(refuse, tmp_path):
  files = dicom_series(tmp_path / 'series', mutate=lambda ds: delattr(ds, 'PixelSpacing'))
  set_dicom_text(files[2], 'RescaleIntercept', b'x!')
  files[3].write_bytes(b'not dicom at all')
  err = refuse(tmp_path / 'series', 'bad DICOM files: IM0001.dcm: missing DICOM tag '
               'PixelSpacing', "IM0002.dcm: RescaleIntercept (0028,1052) is 'x!'",
               'IM0003.dcm: not a DICOM file')
  assert err.count('.dcm:') == 3


# -------------------------------------------------------------- 4. memory
def test_huge_slice_refused_before_decoding(refuse, tmp_path, monkeypatch):
  def never(self):
    raise AssertionError('pixels were decoded')
  monkeypatch.setattr(ImageFile.ImageFile, 'load', never)
  (tmp_path / 'black.png').write_bytes(png_bytes(12000, 12000))  # 144 megapixels
  refuse(tmp_path / 'black.png', 'image is 12000x12000 px (144.0 megapixels), above '
         'the limit of 4096 px a side and 16 megapixels')
  (tmp_path / 'wide.png').write_bytes(png_bytes(4097, 16))
  refuse(tmp_path / 'wide.png', 'above the limit')
  refuse(jpeg_with_size(tmp_path / 'big.jpg', 4096, 4096), '16.8 megapixels')


def test_study_size_capped_by_declared_shape(refuse, tmp_path):
  (tmp_path / 'big.nii.gz').write_bytes(nifti_bytes(gz=True, dim=[3, 4096, 4096, 64,
                                                                  1, 1, 1, 1]))
  refuse(tmp_path / 'big.nii.gz', 'volume is 4096x4096x64 voxels, 4.0 GiB as float32, '
         'above the limit of 2 GiB per study')
  folder = tmp_path / 'series'
  write_dicom_series(folder, [np.zeros((16, 16))] * 40, (0.7, 0.7), 2.0, (0, 0, 0))
  first = sorted(folder.iterdir())[0]
  ds = pydicom.dcmread(first)
  ds.Rows = ds.Columns = 4096
  ds.save_as(first)
  refuse(folder, 'series (Columns x Rows x files) is 4096x4096x40 voxels, 2.5 GiB',
         name=first.name)


# ------------------------------------------------------- 5. smaller things
def test_report_spacing_and_shape_in_the_file_axis_order(tmp_path):
  canonical = np.full((20, 12, 6), -700.0, np.float32)
  stored = oblique_nifti(tmp_path / 'v.nii.gz', canonical, (0.7, 0.9, 2.5))  # A, L, I
  info = report.input_info(volume_io.read_study(tmp_path / 'v.nii.gz'))
  assert info['axes'] == 'file order' and info['orientation'] == 'ALI'
  assert info['shape'] == list(stored.shape) == [12, 20, 6]
  assert info['spacing_mm'] == pytest.approx([0.9, 0.7, 2.5])
  dicom_series(tmp_path / 'series')
  info = report.input_info(volume_io.read_study(tmp_path / 'series'))
  assert info['axes'] == 'canonical RAS (X, Y, Z)' and info['shape'] == [16, 16, 4]
  assert info['spacing_mm'] == pytest.approx([0.7, 0.7, 2.0])


@pytest.mark.parametrize('qcode,scode', [(0, 1), (1, 0), (0, 0), (1, 2), (2, 0)])
def test_written_mask_keeps_the_input_transform_codes(tmp_path, qcode, scode):
  affine = AFFINE.copy()
  affine[:3, 3] = (-10, 20, 30)
  fields = {'qform_code': qcode, 'sform_code': scode}
  (tmp_path / 'v.nii').write_bytes(nifti_bytes(affine=affine, **fields))
  study = volume_io.read_study(tmp_path / 'v.nii')
  name = volume_io.write_like_input(study, np.zeros(study.volume.shape, np.uint8),
                                    tmp_path / 'mask', labels=True)
  written, original = nib.load(tmp_path / name), nib.load(tmp_path / 'v.nii')
  assert int(written.header['qform_code']) == qcode
  assert int(written.header['sform_code']) == scode
  np.testing.assert_allclose(written.affine, original.affine, atol=1e-5)
  np.testing.assert_allclose(written.header.get_zooms(), original.header.get_zooms())


def test_builder_folder_reasons(tmp_path):
  root = tmp_path / 'medseg'
  _medseg_slices(root, n=6)
  train = root / 'train'
  os.remove(train / 'images' / '3.jpg')  # masks_multiclass/3.png is left alone
  _save(f'{train}/images/4.jpg', np.zeros((1, 1)))
  _save(f'{train}/masks_multiclass/4.png', np.zeros((1, 1)), palette=True)
  os.remove(train / 'images' / '5.jpg')
  os.symlink(tmp_path / 'gone.jpg', train / 'images' / '5.jpg')
  with pytest.raises(BadInputError) as error:
    _build('medseg_covid', tmp_path, root)
  head, lines = _bad_lines(error)
  assert head.startswith('medseg_covid: 3 bad files'), (head, lines)
  for name, reason in (('masks_multiclass/3.png', 'mask without its image'),
                       ('images/4.jpg', 'image is 1x1 px, too small to be a CT slice '
                        '(minimum 16 px)'),
                       ('images/5.jpg', 'broken symbolic link (target missing)')):
    assert any(name in line and reason in line for line in lines), (name, lines)


def test_dangling_link_given_to_predict(refuse, tmp_path):
  os.symlink(tmp_path / 'gone.nii.gz', tmp_path / 'scan.nii.gz')
  refuse(tmp_path / 'scan.nii.gz', 'broken symbolic link (target missing)')
  dicom_series(tmp_path / 'series')
  os.symlink(tmp_path / 'gone.dcm', tmp_path / 'series' / 'IM0009.dcm')
  refuse(tmp_path / 'series', 'IM0009.dcm: broken symbolic link')


def test_limits_are_documented_constants():
  doc = readers.__doc__
  for name in ('MAX_SIDE', 'MAX_SLICE_PIXELS', 'MIN_SLICE_SIDE', 'MAX_STUDY_BYTES',
               'SPACING_RANGE_MM', 'MAX_EXTRA_BYTES'):
    assert name in doc and hasattr(readers, name), name
  assert readers.MAX_STUDY_BYTES == 2 * 2**30 and readers.MAX_SIDE == 4096
