"""DICOM-SEG output (issue 40): the lesion mask of a DICOM study written as a
Segmentation that references the source series, read back with pydicom and
highdicom, frame by frame equal to the mask on each source image."""

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest

from mtl_jax import dicom_seg, volume_io
from mtl_jax.errors import UserError

from test_predict import oblique_nifti, synthetic_volume, write_dicom_series


@pytest.fixture
def series(tmp_path):
  vol, _ = synthetic_volume(size=48, n=4, seed=2)  # canonical RAS (x, y, k)
  slices = [vol[::-1, ::-1, k].T for k in range(vol.shape[2])]  # LPS (rows, cols)
  uid = write_dicom_series(tmp_path / 'dicom', slices, (0.8, 0.7), 2.0, (-20.0, -30.0, 100.0))
  frame_of_reference = pydicom.uid.generate_uid()  # every real CT series has one
  for path in (tmp_path / 'dicom').iterdir():
    ds = pydicom.dcmread(path)
    ds.FrameOfReferenceUID = frame_of_reference
    ds.save_as(path, enforce_file_format=True)
  return tmp_path / 'dicom', uid, vol


@pytest.mark.parametrize('num_classes', [1, 2])
def test_seg_references_the_series_and_lies_on_its_images(series, num_classes, tmp_path):
  folder, uid, vol = series
  study = volume_io.read_study(folder)
  labels = np.zeros(vol.shape, np.uint8)  # an oracle mask in the canonical grid
  labels[vol > 100] = 1
  if num_classes == 2:
    labels[vol > 400] = 2
  name = dicom_seg.write(study, labels, tmp_path / 'lesions', num_classes, '0.1.0')
  seg = hd.seg.segread(tmp_path / name)
  raw = pydicom.dcmread(tmp_path / name)
  assert raw.Modality == 'SEG' and raw.SeriesDescription == dicom_seg.SERIES_DESCRIPTION
  assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
  assert [s.SegmentLabel for s in raw.SegmentSequence] == (
      ['COVID-19 lesion'] if num_classes == 1 else ['ground-glass opacity', 'consolidation'])
  sources = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in folder.iterdir()}
  for sop_uid, ds in sources.items():
    k = int(round((float(ds.ImagePositionPatient[2]) - 100.0) / 2.0))
    expected = labels[::-1, ::-1, k].T  # the same voxels, in the file's rows and columns
    for segment in range(1, num_classes + 1):
      got = seg.get_pixels_by_source_instance(
          source_sop_instance_uids=[sop_uid], segment_numbers=[segment],
          assert_missing_frames_are_empty=True, skip_overlap_checks=True)[0, ..., 0]
      np.testing.assert_array_equal(got, expected == segment)


def test_a_series_without_a_frame_of_reference_is_one_line(tmp_path):
  vol, _ = synthetic_volume(size=32, n=2, seed=1)
  write_dicom_series(tmp_path / 'd', [vol[::-1, ::-1, k].T for k in range(2)], (1.0, 1.0),
                     2.0, (0.0, 0.0, 0.0))
  study = volume_io.read_study(tmp_path / 'd')
  with pytest.raises(UserError, match='has no FrameOfReferenceUID'):
    dicom_seg.write(study, np.zeros(study.volume.shape, np.uint8), tmp_path / 'x', 1, '0')


def test_non_dicom_input_is_one_line(tmp_path):
  vol, _ = synthetic_volume(size=32, n=2, seed=1)
  oblique_nifti(tmp_path / 's.nii.gz', vol, (1.0, 1.0, 2.0), ('R', 'A', 'S'))
  study = volume_io.read_study(tmp_path / 's.nii.gz')
  with pytest.raises(UserError, match='--output_type dicom_seg needs DICOM input'):
    dicom_seg.write(study, np.zeros(study.volume.shape, np.uint8), tmp_path / 'x', 1, '0')


@pytest.mark.slow  # over 20 s on 2 cores (56 JPEG Lossless slices)
def test_a_seg_of_the_real_series_references_it(shared_data, tmp_path):
  """The real COVID-CT-MD series (JPEG Lossless, every third slice): the SEG
  of a mask of its dense voxels has one frame per image that holds them."""
  folder = shared_data / 'ct_md_sample' / 'normal002'
  study = volume_io.read_study(folder)
  labels = (study.volume > 300).astype(np.uint8)  # bone: a mask the oracle knows
  name = dicom_seg.write(study, labels, tmp_path / 'bone', 1, '0.1.0')
  raw = pydicom.dcmread(tmp_path / name)
  assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid
  assert raw.FrameOfReferenceUID == pydicom.dcmread(next(
      p for p in sorted(folder.iterdir()) if p.suffix != '.md')).FrameOfReferenceUID
  assert int(raw.NumberOfFrames) == int(np.sum(labels.any(axis=(0, 1))))


def test_predict_writes_the_seg_beside_the_nifti_mask(series, model_dir, tmp_path):
  from mtl_jax import cli  # pylint: disable=g-import-not-at-top
  folder, uid, _ = series
  out = tmp_path / 'out'
  assert cli.main(['predict', '--workdir', model_dir, '--input', str(folder), '--output',
                   str(out), '--output_type', 'dicom_seg']) == 0
  report = json.loads((out / 'report.json').read_text())
  assert report['outputs']['lesion_seg'] == 'lesion_seg.dcm'
  raw = pydicom.dcmread(out / 'lesion_seg.dcm')
  assert raw.Modality == 'SEG' and raw.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
  assert (out / 'lesion_mask.nii.gz').exists()


def test_predict_dicom_seg_of_a_nifti_is_one_line(model_dir, tmp_path, capsys):
  from mtl_jax import cli  # pylint: disable=g-import-not-at-top
  vol, _ = synthetic_volume(size=32, n=2, seed=1)
  oblique_nifti(tmp_path / 's.nii.gz', vol, (1.0, 1.0, 2.0), ('R', 'A', 'S'))
  assert cli.main(['predict', '--workdir', model_dir, '--input', str(tmp_path / 's.nii.gz'),
                   '--output', str(tmp_path / 'o'), '--output_type', 'dicom_seg']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and '--output_type dicom_seg needs DICOM input' in err[0]
  assert not (tmp_path / 'o').exists()
