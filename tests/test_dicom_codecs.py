"""Compressed DICOM, as hospitals export it (issue 40): each common lossless
transfer syntax that pydicom can write, from the project's own synthetic HU
series, predicts exactly what the uncompressed series does; the real JPEG
Lossless (Process 14) series in ../shared/data decodes to HU."""

import pathlib
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from mtl_jax import predict, volume_io

from test_predict import canonical, synthetic_volume, write_dicom_series

# What pydicom 3 encodes with the locked plugins: RLE itself, JPEG-LS through
# pyjpegls, JPEG 2000 through pylibjpeg-openjpeg. JPEG Lossless (Process 14),
# the most common in PACS exports, it can decode (pylibjpeg-libjpeg) but not
# write: that syntax is checked on the real series below instead.
ENCODED = {'rle': RLELossless, 'jpeg_ls': JPEGLSLossless, 'jpeg2000': JPEG2000Lossless}


def _compressed_copy(src: pathlib.Path, dst: pathlib.Path, syntax) -> None:
  dst.mkdir(parents=True)
  for path in sorted(src.glob('*.dcm')):
    ds = pydicom.dcmread(path)
    ds.compress(syntax)
    ds.save_as(dst / path.name, enforce_file_format=True)


@pytest.fixture(scope='module')
def series(tmp_path_factory):
  root = tmp_path_factory.mktemp('codecs')
  vol, _ = synthetic_volume(size=64, n=4, seed=3)
  write_dicom_series(root / 'plain', [vol[::-1, ::-1, k].T for k in range(vol.shape[2])],
                     (0.8, 0.7), 2.0, (-20.0, -30.0, 100.0))
  for name, syntax in ENCODED.items():
    _compressed_copy(root / 'plain', root / name, syntax)
  return root


@pytest.mark.parametrize('name', sorted(ENCODED))
def test_each_compressed_series_predicts_as_the_uncompressed_one(series, name, predictor,
                                                                 tmp_path):
  first = pydicom.dcmread(next((series / name).glob('*.dcm')))
  assert first.file_meta.TransferSyntaxUID == ENCODED[name]
  plain, packed = volume_io.read_study(series / 'plain'), volume_io.read_study(series / name)
  np.testing.assert_array_equal(packed.volume, plain.volume)  # lossless, same geometry
  reps = {n: predict.run(None, series / n, tmp_path / n, predictor=predictor)[0]
          for n in ('plain', name)}
  assert reps[name]['classification'] == reps['plain']['classification']
  (ma, aa), (mb, ab) = (canonical(tmp_path / n / 'lesion_mask.nii.gz') for n in ('plain', name))
  np.testing.assert_array_equal(ma, mb)
  np.testing.assert_allclose(aa, ab)


def test_real_jpeg_lossless_series_decodes_to_hounsfield_units(shared_data, tmp_path):
  folder = shared_data / 'ct_md_sample' / 'normal002'
  first = pydicom.dcmread(next(p for p in sorted(folder.iterdir()) if p.is_file()
                               and not p.name.startswith('README')))
  assert 'JPEG Lossless' in first.file_meta.TransferSyntaxUID.name
  copy = tmp_path / 'normal002'
  shutil.copytree(folder, copy)
  study = volume_io.read_study(copy)
  assert study.volume.shape[:2] == (512, 512) and study.num_slices == 56
  air, body = np.percentile(study.volume, 1), np.percentile(study.volume, 99)
  assert -1100 < air < -900 and 0 < body < 2000  # air and soft tissue/bone, in HU
