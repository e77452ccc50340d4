"""`mtl-jax predict`: geometry round trips, DICOM/NIfTI agreement, OOD, bad inputs.

A 2-step model cannot segment, so the geometry tests replace the model's
prediction with "lesion = slice above an HU threshold": resampling and
orientation are then checked voxel by voxel, independently of model quality.
The real model runs end to end on NIfTI, DICOM, PNG/JPG and batch inputs.
"""

import hashlib
import json
import os
import pathlib
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from mtl_jax import cli, errors, lungs, predict, report, volume_io
from mtl_jax.data import preprocess, synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
WINDOW = (-1000.0, 400.0)


# --------------------------------------------------------------------- fixtures
# model_dir and predictor (a tiny trained model) are in conftest.py.


def fake_threshold_model(predictor, hu_threshold):
  """predict_batch that marks model-space pixels above `hu_threshold`."""
  level = float(preprocess.window_hu(hu_threshold, *predictor.window))

  def predict_batch(images):
    n = len(predictor.class_names)
    return {'seg': (images > level).astype(np.float32),
            'cls_probs': np.full((len(images), n), 1.0 / n, np.float32),
            'recon_mse': np.zeros(len(images), np.float32)}
  return predict_batch


def synthetic_volume(size=64, n=6, seed=0, kind='covid19'):
  """(HU canonical RAS (X, Y, Z) integer-valued, lung truth) from synthetic slices."""
  rng = np.random.default_rng(seed)
  patient = synthetic.sample_patient(rng)
  vol = np.zeros((size, size, n), np.float32)
  truth = np.zeros((size, size, n), bool)
  for i, level in enumerate(np.linspace(0.3, 0.7, n)):
    hu, _, lung = synthetic.generate_slice(rng, kind, size, patient=patient,
                                           level=level, return_lungs=True)
    vol[:, :, n - 1 - i] = np.round(hu)[::-1, ::-1].T  # slice 0 = most inferior
    truth[:, :, n - 1 - i] = lung[::-1, ::-1].T
  return vol, truth


def rotation(degrees_z, degrees_x):
  a, b = np.deg2rad(degrees_z), np.deg2rad(degrees_x)
  rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
  rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
  out = np.eye(4)
  out[:3, :3] = rz @ rx
  return out


def oblique_nifti(path, canonical, spacing, axcodes=('A', 'L', 'I')):
  """Save `canonical` (RAS order) as a non-RAS, oblique, anisotropic NIfTI.

  Returns the data array as stored (the input's own axis order)."""
  affine = np.diag([*spacing, 1.0])
  affine[:3, 3] = (-100.0, 20.0, 35.0)
  ras = nib.Nifti1Image(canonical, affine)
  ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt('RAS'),
                                         nib.orientations.axcodes2ornt(axcodes))
  image = ras.as_reoriented(ornt)
  image = nib.Nifti1Image(np.asarray(image.dataobj), rotation(12, 8) @ image.affine)
  assert nib.aff2axcodes(image.affine) == axcodes
  nib.save(image, str(path))
  return np.asarray(image.dataobj)


def write_dicom_series(folder, canonical_lps_slices, spacing_rc, dz, origin,
                       series_uid=None, modality='CT'):
  """One file per slice (rows, cols) int HU, axial, shuffled file names."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  series_uid = series_uid or generate_uid()
  study_uid = generate_uid()
  order = np.random.default_rng(1).permutation(len(canonical_lps_slices))
  for k, pixels in enumerate(canonical_lps_slices):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = modality, series_uid, study_uid
    ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2] + k * dz)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [float(spacing_rc[0]), float(spacing_rc[1])]
    ds.SliceThickness = float(dz)
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
    ds.PhotometricInterpretation = 'MONOCHROME2'
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = (np.asarray(pixels) + 1024).astype(np.uint16).tobytes()
    ds.save_as(folder / f'IM{order[k]:04d}.dcm', enforce_file_format=True)
  return series_uid


def photo_like(size=96, seed=5):
  """A colour-free natural-photo stand-in: smooth gradient plus text-like strokes."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
  img = 40 + 170 * (0.6 * xx + 0.4 * yy)
  for _ in range(60):
    y, x = rng.integers(2, size - 8, 2)
    img[y:y + 2, x:x + rng.integers(3, 9)] = rng.choice([0, 255])
  return img.astype(np.uint8)


def mr_like(size=96):
  yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
  img = np.zeros((size, size))
  img[((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.34) ** 2 < 1] = 150
  img[((yy - 0.5) / 0.32) ** 2 + ((xx - 0.5) / 0.24) ** 2 < 1] = 210
  return img.astype(np.uint8)


def canonical(path):
  image = nib.as_closest_canonical(nib.load(str(path)))
  return np.asarray(image.dataobj), image.affine


# ------------------------------------------------------------- pure functions
def test_severity_and_aggregation_rules():
  assert [report.severity_grade(p) for p in (0, 0.1, 24.9, 25, 50, 74.9, 75, 100)] == [
      'CT-0', 'CT-1', 'CT-1', 'CT-2', 'CT-3', 'CT-3', 'CT-4', 'CT-4']
  assert report.severity_grade(None) is None
  probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1],
                    [0.95, 0.0, 0.05]] + [[0.05, 0.9, 0.05]] * 16, np.float32)
  eligible = np.ones(20, bool)
  eligible[3] = False  # the most-COVID slice has no lung: not used
  study, used = report.aggregate_slices(probs, eligible)
  assert used.tolist() == [0, 2]  # k = ceil(0.1 * 19) = 2 most-COVID eligible slices
  np.testing.assert_allclose(study, probs[[0, 2]].mean(0))
  _, used = report.aggregate_slices(probs, np.zeros(20, bool))
  assert used.tolist() == [0, 3]  # no eligible slice: every slice


def test_ood_percentile_with_crafted_reference():
  ref = np.linspace(0.01, 0.02, 101)  # percentile p at 0.01 + p * 1e-4
  score = report.ood_score(0.015, ref)
  assert score['percentile'] == pytest.approx(50.0) and not score['flagged']
  assert report.ood_score(0.0199, ref)['percentile'] == pytest.approx(99.0)
  assert not report.ood_score(0.0199, ref)['flagged']
  assert report.ood_score(0.01995, ref)['flagged']
  assert report.ood_score(0.5, ref) == {'percentile': 100.0, 'flagged': True,
                                        'threshold_value': pytest.approx(0.0199)}
  assert report.ood_score(0.0, ref)['percentile'] == 0.0
  with pytest.raises(ValueError):
    report.ood_score(0.1, ref[:10])


# ---------------------------------------------------------------- lung mask
def test_lung_mask_phantom_removes_trachea_and_splits_sides():
  """Body, two lungs and a trachea that branches into both lungs."""
  x, y, z = np.meshgrid(np.arange(80), np.arange(64), np.arange(30), indexing='ij')
  hu = np.full(x.shape, -1000.0, np.float32)
  hu[((x - 40) / 36) ** 2 + ((y - 32) / 26) ** 2 < 1] = 40.0  # body
  right = ((x - 58) / 13) ** 2 + ((y - 32) / 18) ** 2 + ((z - 12) / 11) ** 2 < 1
  left = ((x - 22) / 12) ** 2 + ((y - 32) / 17) ** 2 + ((z - 12) / 11) ** 2 < 1
  hu[right | left] = -860.0
  trachea = ((x - 40) ** 2 + (y - 36) ** 2 < 16) & (z >= 18)
  bronchi = (np.abs(y - 36) < 3) & (np.abs(z - 18) < 2) & (np.abs(x - 40) < 24)
  hu[trachea | bronchi] = -1000.0
  result = lungs.segment_lungs(hu, (1.0, 1.2, 2.0))
  assert result.notes == []
  assert not (result.labels[trachea & ~right & ~left] > 0).any()
  # Right = larger x; all but the bronchi inside each lung is kept.
  assert (result.labels[right] == lungs.RIGHT).mean() > 0.95
  assert (result.labels[left] == lungs.LEFT).mean() > 0.95
  assert not (result.labels[right] == lungs.LEFT).any()
  assert not (result.labels[left] == lungs.RIGHT).any()
  volumes = result.volumes_ml(1.0 * 1.2 * 2.0 / 1000)
  assert volumes['right'] == pytest.approx(right.sum() * 2.4e-3, rel=0.05)


def test_lung_mask_on_synthetic_anatomy():
  vol, truth = synthetic_volume(size=96, n=5, seed=3)
  result = lungs.segment_lungs(vol, (3.7, 3.7, 5.0))
  mask = result.labels > 0
  assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.9
  right_x = np.nonzero(result.labels == lungs.RIGHT)[0].mean()
  left_x = np.nonzero(result.labels == lungs.LEFT)[0].mean()
  assert right_x > left_x  # RAS: larger x is the patient's right


# ------------------------------------------------------- geometry round trips
@pytest.mark.parametrize('in_plane,exact', [((64, 50), True), ((40, 30), False)])
def test_oblique_non_ras_round_trip(predictor, monkeypatch, tmp_path, in_plane, exact):
  """A lesion at known voxels comes back at those voxels, in the input's geometry."""
  rng = np.random.default_rng(0)
  shape = (*in_plane, 7)
  vol = np.round(rng.uniform(-1000, -600, shape)).astype(np.float32)
  vol[5:14, 8:15, 2:5] = 300.0  # an asymmetric lesion, RAS order
  vol[20:24, 3:6, 6] = 300.0
  stored = oblique_nifti(tmp_path / 'in.nii.gz', vol, (0.7, 0.9, 2.5))
  # Threshold half-way between lesion and background: interpolation is symmetric.
  monkeypatch.setattr(predictor, 'predict_batch', fake_threshold_model(predictor, -250.5))
  predict.run(None, tmp_path / 'in.nii.gz', tmp_path / 'out', predictor=predictor)
  original, out = nib.load(str(tmp_path / 'in.nii.gz')), nib.load(
      str(tmp_path / 'out' / 'lesion_mask.nii.gz'))
  assert out.shape == original.shape
  np.testing.assert_allclose(out.affine, original.affine, atol=1e-5)
  assert nib.aff2axcodes(out.affine) == ('A', 'L', 'I')
  np.testing.assert_allclose(out.header.get_zooms(), original.header.get_zooms(), atol=1e-5)
  mask, expected = np.asarray(out.dataobj), stored > -250.5
  if exact:  # square-padded to the model size: no resampling at all
    np.testing.assert_array_equal(mask > 0, expected)
  else:  # resampled 40 -> 64 -> 40: the lesion comes back with at most an edge voxel
    dice = 2 * ((mask > 0) & expected).sum() / ((mask > 0).sum() + expected.sum())
    assert dice > 0.9
    assert (mask > 0)[ndimage.binary_erosion(expected)].all()  # the whole interior
    assert not ((mask > 0) & ~ndimage.binary_dilation(expected)).any()  # edges only
  rep = json.loads((tmp_path / 'out' / 'report.json').read_text())
  voxel_ml = abs(np.linalg.det(original.affine[:3, :3])) / 1000
  assert rep['lesion']['volume_ml'] == pytest.approx((mask > 0).sum() * voxel_ml)
  assert rep['input']['orientation'] == 'ALI'


def test_multiclass_labels_resampled_by_argmax(predictor, monkeypatch, tmp_path):
  vol = np.full((48, 48, 2), -800.0, np.float32)
  vol[10:20, 10:20, :] = 100.0  # "consolidation"
  vol[30:40, 30:40, :] = -500.0  # "ground glass"
  nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 3.0, 1.0])), str(tmp_path / 'v.nii'))
  g, c = (float(preprocess.window_hu(v, *WINDOW)) for v in (-600, 0))

  def three_class(images):
    probs = np.stack([images <= g, (images > g) & (images <= c), images > c], -1)
    return {'seg': probs.astype(np.float32),
            'cls_probs': np.tile([[0.2, 0.3, 0.5]], (len(images), 1)).astype(np.float32),
            'recon_mse': np.zeros(len(images), np.float32)}
  monkeypatch.setattr(predictor, 'multi', True)
  monkeypatch.setattr(predictor, 'predict_batch', three_class)
  rep = predict.run(None, tmp_path / 'v.nii', tmp_path / 'out', predictor=predictor)[0]
  mask = np.asarray(nib.load(str(tmp_path / 'out' / 'lesion_mask.nii.gz')).dataobj)
  assert (mask[11:19, 11:19] == 2).all() and (mask[31:39, 31:39] == 1).all()
  assert set(np.unique(mask).tolist()) == {0, 1, 2}
  voxel_ml = 0.8 * 0.8 * 3 / 1000  # (the fake model's partial-volume rim is GGO)
  assert rep['lesion']['by_class_ml'] == pytest.approx(
      {'ggo': (mask == 1).sum() * voxel_ml, 'consolidation': (mask == 2).sum() * voxel_ml})
  assert rep['lesion']['volume_ml'] == pytest.approx((mask > 0).sum() * voxel_ml)
  assert rep['classification']['predicted_class'] == 'other'


def test_dicom_series_matches_nifti_of_same_volume(predictor, monkeypatch, tmp_path):
  vol, _ = synthetic_volume(size=64, n=4, seed=1)  # canonical RAS
  # The same voxels as a DICOM series: RAS (x, y, k) -> LPS columns/rows reversed.
  spacing_rc, dz, origin = (0.8, 0.7), 2.0, (-20.0, -30.0, 100.0)
  lps_slices = [vol[::-1, ::-1, k].T for k in range(vol.shape[2])]  # (rows, cols)
  write_dicom_series(tmp_path / 'dicom', lps_slices, spacing_rc, dz, origin)
  lps = np.array([[spacing_rc[1], 0, 0, origin[0]], [0, spacing_rc[0], 0, origin[1]],
                  [0, 0, dz, origin[2]], [0, 0, 0, 1]])
  data = np.stack([s.T for s in lps_slices], axis=-1)  # (col, row, slice) = LPS voxels
  nib.save(nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps),
           str(tmp_path / 'same.nii.gz'))
  reps = {}
  for name in ('dicom', 'same.nii.gz'):  # the real (2-step) model
    reps[name] = predict.run(None, tmp_path / name, tmp_path / f'out_{name}',
                             save_probability=True, predictor=predictor)[0]
  a, b = reps['dicom'], reps['same.nii.gz']
  assert a['input']['kind'] == 'dicom' and b['input']['kind'] == 'nifti'
  for key in ('probabilities', 'predicted_class'):
    assert a['classification'][key] == pytest.approx(b['classification'][key], abs=1e-6)
  assert a['lungs']['volume_ml'] == pytest.approx(b['lungs']['volume_ml'])
  assert a['ood']['value'] == pytest.approx(b['ood']['value'], rel=1e-6)
  for output in ('lesion_mask.nii.gz', 'lesion_probability.nii.gz'):
    (ma, aa), (mb, ab) = (canonical(tmp_path / f'out_{n}' / output) for n in reps)
    np.testing.assert_array_equal(ma, mb)
    np.testing.assert_allclose(aa, ab, atol=1e-4)
  # And with the threshold model: lesion voxels agree exactly.
  monkeypatch.setattr(predictor, 'predict_batch', fake_threshold_model(predictor, 150.5))
  for name in ('dicom', 'same.nii.gz'):
    predict.run(None, tmp_path / name, tmp_path / f'thr_{name}', predictor=predictor)
  (ma, _), (mb, _) = (canonical(tmp_path / f'thr_{n}' / 'lesion_mask.nii.gz') for n in reps)
  np.testing.assert_array_equal(ma, mb)
  np.testing.assert_array_equal(ma > 0, vol > 150.5)


# ------------------------------------------------------- the real model, e2e
def test_end_to_end_report_schema_with_cli(model_dir, tmp_path, capsys):
  vol, _ = synthetic_volume(size=64, n=5, seed=2)
  stored = oblique_nifti(tmp_path / 'study.nii.gz', vol, (5.6, 5.6, 5.0), ('L', 'P', 'S'))
  out = tmp_path / 'result'
  assert cli.main(['predict', '--workdir', model_dir, '--input',
                   str(tmp_path / 'study.nii.gz'), '--output', str(out), '--tta',
                   '--save_probability', '--batch_size', '3']) == 0
  assert 'study' in capsys.readouterr().out
  assert sorted(os.listdir(out)) == ['lesion_mask.nii.gz', 'lesion_probability.nii.gz',
                                     'overview.png', 'report.json']
  rep = json.loads((out / 'report.json').read_text())
  assert rep['schema_version'] == report.SCHEMA_VERSION
  assert rep['input']['sha256'] == hashlib.sha256(
      (tmp_path / 'study.nii.gz').read_bytes()).hexdigest()
  assert rep['checkpoint']['step'] == 2 and rep['checkpoint']['which'] == 'best'
  assert rep['preprocessing']['tta'] and rep['preprocessing']['batch_size'] == 8
  assert rep['preprocessing']['window_hu'] == list(WINDOW)
  probs = rep['classification']['probabilities']
  assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
  assert rep['classification']['predicted_class'] == max(probs, key=probs.get)
  assert rep['classification']['aggregation']['rule'] == 'top_k_covid_mean'
  assert len(rep['slices']) == 5 and all(s['lung'] for s in rep['slices'])
  lung = rep['lungs']
  assert lung['available'] and 100 < lung['volume_ml']['total'] < 5000
  assert rep['severity']['grade'] == report.severity_grade(
      lung['involvement_percent']['total'])
  assert 0 <= rep['ood']['reconstruction_error']['percentile'] <= 100
  # Checkpoints now carry the encoder-feature reference (mtl_jax/ood.py): it decides.
  assert rep['ood']['rule'] == 'encoder features'
  assert rep['ood']['flagged'] == (rep['ood']['value'] > rep['ood']['threshold'])
  for name in ('lesion_mask.nii.gz', 'lesion_probability.nii.gz'):
    image = nib.load(str(out / name))
    assert image.shape == stored.shape
    np.testing.assert_allclose(image.affine, nib.load(str(tmp_path / 'study.nii.gz')).affine,
                               atol=1e-5)
  overview = Image.open(out / 'overview.png')
  assert overview.mode == 'RGB' and overview.height > 256
  # A second run replaces the earlier output folder atomically.
  assert cli.main(['predict', '--workdir', model_dir, '--input',
                   str(tmp_path / 'study.nii.gz'), '--output', str(out)]) == 0
  assert 'lesion_probability.nii.gz' not in os.listdir(out)
  assert not [p for p in os.listdir(tmp_path) if p.startswith('.result')]


def test_ct_small_dicom_file_folder_and_series_choice(predictor, tmp_path):
  ct_small = pathlib.Path(pydicom.data.get_testdata_file('CT_small.dcm'))
  uid = str(pydicom.dcmread(ct_small).SeriesInstanceUID)
  rep = predict.run(None, ct_small, tmp_path / 'one', predictor=predictor)[0]
  assert rep['input']['kind'] == 'dicom' and rep['input']['series_uid'] == uid
  assert nib.load(str(tmp_path / 'one' / 'lesion_mask.nii.gz')).shape == (128, 128, 1)
  folder = tmp_path / 'mixed'
  folder.mkdir()
  shutil.copy(ct_small, folder / 'small.dcm')
  (folder / 'README').write_text('not DICOM')
  vol, _ = synthetic_volume(size=64, n=3)
  other = write_dicom_series(folder, [vol[::-1, ::-1, k].T for k in range(3)],
                             (0.7, 0.7), 3.0, (0, 0, 0))
  rep = predict.run(None, folder, tmp_path / 'most', predictor=predictor)[0]
  assert rep['input']['series_uid'] == other and rep['input']['num_slices'] == 3
  rep = predict.run(None, folder, tmp_path / 'chosen', series=uid, predictor=predictor)[0]
  assert rep['input']['series_uid'] == uid and rep['input']['num_slices'] == 1


def test_medseg_jpg_and_csv_batch(predictor, shared_data, tmp_path):
  images = sorted((shared_data / 'medseg_covid' / 'train' / 'images').glob('*.jpg'))[:2]
  masks = [shared_data / 'medseg_covid' / 'train' / 'masks' / (p.stem + '.png')
           for p in images]
  rep = predict.run(None, images[0], tmp_path / 'jpg', predictor=predictor)[0]
  size = Image.open(images[0]).size
  mask = Image.open(tmp_path / 'jpg' / 'lesion_mask.png')
  assert mask.size == size and mask.mode == 'P'
  assert rep['input']['intensity'] == '8bit' and rep['lungs']['available'] is False
  assert 'no HU lung mask' in rep['lungs']['limitation']
  assert rep['severity']['grade'] is None
  assert rep['lesion']['area_pixels'] == np.count_nonzero(np.asarray(mask))  # the mask it wrote
  assert any('8-bit input' in w for w in rep['warnings'])
  csv = tmp_path / 'list.csv'
  csv.write_text('input,mask\n' + ''.join(f'{i},{m}\n' for i, m in zip(images, masks)))
  reps = predict.run(None, csv, tmp_path / 'batch', predictor=predictor)
  assert len(reps) == 2 and all(0 <= r['reference_mask']['dice'] <= 1 for r in reps)
  summary = json.loads((tmp_path / 'batch' / 'batch_summary.json').read_text())
  assert [s['name'] for s in summary['studies']] == [p.stem for p in images]
  for p in images:
    assert (tmp_path / 'batch' / p.stem / 'report.json').exists()


def test_per_source_standardisation_replayed_on_a_study(predictor, monkeypatch,
                                                        tmp_path):
  """A model trained with per-source standardisation sees a study standardised
  by the study's own foreground statistics, and the report says so."""
  seen = []
  fake = fake_threshold_model(predictor, -500)
  monkeypatch.setattr(predictor, 'predict_batch',
                      lambda images: seen.append(images.copy()) or fake(images))
  monkeypatch.setattr(predictor.replay, 'standardization',
                      {'mode': 'per_source', 'reference': [0.5, 0.15]})
  volume, _ = synthetic_volume(size=64, n=6)
  path = tmp_path / 'ct.nii.gz'
  nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 5.0, 1.0])), path)
  rep = predict.run(None, path, tmp_path / 'out', predictor=predictor)[0]
  images = np.concatenate(seen)[:6]
  values = images[images > preprocess.FOREGROUND]
  assert values.mean() == pytest.approx(0.5, abs=0.01)
  assert values.std() == pytest.approx(0.15, abs=0.01)
  assert 'study standardised from foreground mean/std' in rep['preprocessing']['rendering']


def test_lung_crop_replayed_and_mask_pasted_back(predictor, monkeypatch, tmp_path):
  """With a lung-cropping model, a threshold 'model' gives the same mask in
  the input's geometry as without the crop (inside the lungs' box)."""
  monkeypatch.setattr(predictor, 'predict_batch', fake_threshold_model(predictor, -500))
  volume, _ = synthetic_volume(size=64, n=4)
  path = tmp_path / 'ct.nii.gz'
  nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 5.0, 1.0])), path)
  masks = {}
  for crop in (False, True):
    monkeypatch.setattr(predictor.replay, 'lung_crop', crop)
    predict.run(None, path, tmp_path / f'out{crop}', predictor=predictor)
    masks[crop] = np.asarray(nib.load(tmp_path / f'out{crop}' / 'lesion_mask.nii.gz')
                             .dataobj) > 0
  a, b = masks[False], masks[True]
  assert a.sum() > 100 and 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.85


def test_ood_flags_photograph_and_mr_not_synthetic_ct(predictor, tmp_path, capsys):
  vol, _ = synthetic_volume(size=64, n=4, seed=11)
  nib.save(nib.Nifti1Image(vol, np.diag([5.6, 5.6, 5.0, 1.0])), str(tmp_path / 'ct.nii.gz'))
  Image.fromarray(photo_like()).save(tmp_path / 'photo.png')
  Image.fromarray(mr_like()).convert('RGB').save(tmp_path / 'mr.png')  # gray as RGB
  reps = {name: predict.run(None, tmp_path / name, tmp_path / f'out_{name}',
                            predictor=predictor)[0]
          for name in ('ct.nii.gz', 'photo.png', 'mr.png')}
  err = capsys.readouterr().err
  assert not reps['ct.nii.gz']['ood']['flagged']
  assert reps['ct.nii.gz']['ood']['reconstruction_error']['percentile'] < 99
  for name in ('photo.png', 'mr.png'):
    assert reps[name]['ood']['flagged'], reps[name]['ood']
    assert any('out of distribution' in w for w in reps[name]['warnings'])
    assert f'{name}: out of distribution' in err


# ---------------------------------------------------------------- bad inputs
def _bad_inputs(tmp_path):
  cases = {}
  (tmp_path / 'notes.txt').write_text('hello')
  cases['notes.txt'] = 'not an image or volume'
  (tmp_path / 'scan.bin').write_bytes(os.urandom(2000))
  cases['scan.bin'] = 'not an image or volume'
  (tmp_path / 'broken.nii.gz').write_bytes(b'not a nifti at all')
  cases['broken.nii.gz'] = 'unreadable NIfTI'
  ct_small = pydicom.dcmread(pydicom.data.get_testdata_file('CT_small.dcm'))
  ct_small.Modality = 'MR'
  (tmp_path / 'mr_series').mkdir()
  ct_small.save_as(tmp_path / 'mr_series' / 'im1.dcm')
  cases['mr_series'] = 'not CT'
  rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / 'holiday.png')
  cases['holiday.png'] = 'colour image'
  nan = np.full((8, 8, 3), -500.0, np.float32)
  nan[2, 2, 1] = np.nan
  nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp_path / 'nan.nii.gz'))
  cases['nan.nii.gz'] = 'NaN'
  nib.save(nib.Nifti1Image(np.zeros((8, 8, 3, 2), np.float32), np.eye(4)),
           str(tmp_path / 'fourd.nii.gz'))
  cases['fourd.nii.gz'] = 'expected a 3-D volume'
  (tmp_path / 'empty_dicom').mkdir()
  cases['empty_dicom'] = 'empty'
  nib.save(nib.Nifti1Image(np.full((8, 8, 3), -500.0, np.float32), np.eye(4)),
           str(tmp_path / 'vol.nii.gz'))
  nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), np.eye(4)),
           str(tmp_path / 'mask.nii.gz'))
  (tmp_path / 'pairs.csv').write_text('input,mask\nvol.nii.gz,mask.nii.gz\n')
  cases['pairs.csv'] = 'mask.nii.gz: mask shape (8, 8, 4) does not match'
  cases['missing.nii.gz'] = 'not found'
  return cases


def test_bad_inputs_one_line_error_and_output_untouched(model_dir, tmp_path, capsys):
  cases = _bad_inputs(tmp_path)
  previous = tmp_path / 'previous'
  previous.mkdir()
  (previous / 'report.json').write_text('{"earlier": true}')
  for name, reason in cases.items():
    for out in (tmp_path / 'new' / 'out', previous):
      code = cli.main(['predict', '--workdir', model_dir, '--input',
                       str(tmp_path / name), '--output', str(out)])
      err = capsys.readouterr().err.strip()
      assert code == 2, name
      assert len(err.splitlines()) == 1 and reason in err, err
      assert name in err or name == 'pairs.csv', err
      assert not (tmp_path / 'new').exists()
      assert os.listdir(previous) == ['report.json']
      assert (previous / 'report.json').read_text() == '{"earlier": true}'
  # A checkpoint folder without a model.
  (tmp_path / 'no_model').mkdir()
  code = cli.main(['predict', '--workdir', str(tmp_path / 'no_model'), '--input',
                   str(tmp_path / 'vol.nii.gz'), '--output', str(previous)])
  err = capsys.readouterr().err.strip()
  assert code == 2 and 'no_model' in err and 'no checkpoint' in err
  with pytest.raises(predict.NoModelError):
    predict.Predictor(str(tmp_path / 'no_model'))
  assert os.listdir(previous) == ['report.json']
  assert not [p for p in os.listdir(tmp_path) if p.startswith(('.out', '.previous'))]


def test_output_folder_with_other_files_is_refused(predictor, tmp_path):
  nib.save(nib.Nifti1Image(np.full((8, 8, 2), -900.0, np.float32), np.eye(4)),
           str(tmp_path / 'v.nii.gz'))
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'thesis.docx').write_text('precious')
  with pytest.raises(errors.BadInputError, match='not empty'):
    predict.run(None, tmp_path / 'v.nii.gz', tmp_path / 'mine', predictor=predictor)
  assert os.listdir(tmp_path / 'mine') == ['thesis.docx']


def test_batch_error_leaves_nothing(predictor, tmp_path):
  folder = tmp_path / 'many'
  folder.mkdir()
  nib.save(nib.Nifti1Image(np.full((8, 8, 2), -900.0, np.float32), np.eye(4)),
           str(folder / 'a.nii.gz'))
  rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(folder / 'b.png')
  with pytest.raises(volume_io.BadInputError, match='b.png'):
    predict.run(None, folder, tmp_path / 'out', predictor=predictor)
  assert sorted(os.listdir(tmp_path)) == ['many']


def test_flip_tta_averages_probabilities_and_evaluate_scores_its_labels(model_dir, tmp_path):
  """`predict --tta` and `evaluate --tta` share one rule: probabilities are
  the mean over the slice and its left-right flip, and the label map is
  derived from that mean (never the unflipped slice's labels)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mtl_jax import evaluation, runtime as runtime_lib  # pylint: disable=g-import-not-at-top
  loaded = runtime_lib.load(model_dir, 'best', [])
  size = loaded.runtime.image_size
  images = np.random.default_rng(0).uniform(0, 1, (8, size, size)).astype(np.float32)
  plain_fn = loaded.runtime.predict_fn()
  plain = jax.device_get(plain_fn(loaded.variables, images))
  flipped = jax.device_get(plain_fn(loaded.variables, images[:, :, ::-1].copy()))
  tta = jax.device_get(loaded.runtime.predict_fn(tta=True)(loaded.variables, images))
  expected = (plain['seg_prob'] + flipped['seg_prob'][:, :, ::-1]) / 2
  np.testing.assert_allclose(tta['seg_prob'], expected, atol=1e-5)
  np.testing.assert_array_equal(tta['seg_labels'], tta['seg_prob'] > 0.5)
  np.testing.assert_allclose(tta['cls_probs'], (plain['cls_probs'] + flipped['cls_probs']) / 2,
                             atol=1e-5)
  work = tmp_path / 'run'
  shutil.copytree(model_dir, work, symlinks=True)
  results = evaluation.evaluate_workdir(str(work), 'validation', 'best', tta=True)
  written = json.loads((work / 'eval_validation_tta.json').read_text())
  assert written['tta'] is True and written['dice'] == pytest.approx(results['dice'])
