"""Dataset builders: tiny fixtures in each source's real layout, bad inputs, real data.

Fixtures are written per test (NIfTI with non-identity affines, palette PNG
masks, split lists, CSV, a DICOM series) and built at 64 px with the public
`registry.build_dataset` / `datasets.load_split`, as the CLI does.
"""

import collections
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mtl_jax.data import datasets, features
from mtl_jax.data.readers import BadInputError
from mtl_jax.tfds_builders import registry

SIZE = 64
# RAS voxel -> mm for data stored LPS-flipped with axes (y, x, z) swapped.
ODD_AFFINE = np.array([[0, -0.8, 0, 40], [-0.7, 0, 0, 30], [0, 0, 2.5, -60], [0, 0, 0, 1.]])


def _slice(rng, h=40, w=56):
  """A CT-like 8-bit slice: a bright body ellipse with dark lungs, plus noise."""
  yy, xx = np.mgrid[:h, :w]
  body = ((yy - h / 2) / (h / 2.2)) ** 2 + ((xx - w / 2) / (w / 2.2)) ** 2 < 1
  img = np.where(body, 170, 10) + rng.integers(0, 40, (h, w))
  img[h // 3:2 * h // 3, w // 5:w // 2 - 2] = 40
  return img.astype(np.uint8)


def _save(path, array, palette=False):
  """An 8-bit image file; `palette` writes the values as palette indices."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  array = np.asarray(array, np.uint8)
  image = Image.fromarray(array)
  if palette:
    image = Image.frombytes('P', array.shape[::-1], array.tobytes())
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
  image.save(path)


def _hu_volume(rng, shape=(24, 20, 6)):
  """HU volume (x, y, z): air -1000 outside, soft tissue 40, lungs -850."""
  vol = np.full(shape, -1000.0, np.float32)
  vol[2:-2, 2:-2] = 40
  vol[4:10, 5:15], vol[14:20, 5:15] = -850, -850
  return vol + rng.normal(0, 5, shape).astype(np.float32)


def _nifti(path, data, affine=ODD_AFFINE):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))


def _dicom_series(folder, display_slices, modality='CT'):
  """One CT file per slice (display orientation, HU), written in shuffled order."""
  from pydicom.dataset import Dataset, FileMetaDataset  # pylint: disable=g-import-not-at-top
  from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
  os.makedirs(folder, exist_ok=True)
  series = generate_uid()
  for k in np.random.default_rng(1).permutation(len(display_slices)):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = CTImageStorage, ExplicitVRLittleEndian
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID = meta, CTImageStorage
    ds.SOPInstanceUID, ds.SeriesInstanceUID = meta.MediaStorageSOPInstanceUID, series
    ds.Modality, ds.PatientID = modality, 'anon'
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [-10, -20, 2.5 * k], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.8], 2.5
    ds.Rows, ds.Columns = display_slices[k].shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 'MONOCHROME2'
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = np.round(display_slices[k] + 1024).astype(np.uint16).tobytes()
    ds.save_as(os.path.join(folder, f'IM{k:04d}.dcm'), enforce_file_format=True)


def _build(name, tmp_path, manual, tag='data', **kwargs):
  data_dir = str(tmp_path / tag)
  path = registry.build_dataset(name, data_dir, SIZE, manual_dir=str(manual), **kwargs)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  splits = {s: datasets.load_split(name, s, data_dir, SIZE)
            for s in tfds.builder_from_directory(path).info.splits}
  return {s: [src[i] for i in range(len(src))] for s, src in splits.items()}, path


def _metadata(path):
  with open(os.path.join(path, 'metadata.json')) as f:
    return json.load(f)


def _check_examples(splits, source):
  for examples in splits.values():
    for e in examples:
      assert e['image'].shape == (SIZE, SIZE) and e['mask'].shape == (SIZE, SIZE)
      assert 0 <= e['image'].min() and e['image'].max() <= 1 and e['source'] == source
      assert set(np.unique(e['mask'])) <= {0, 1, 2}


def _no_patient_in_two_splits(splits):
  owners = {}
  for split, examples in splits.items():
    for e in examples:
      assert owners.setdefault(e['patient_id'], split) == split, e['patient_id']


def _bad_lines(error):
  lines = str(error.value).splitlines()
  return lines[0], lines[1:]


# -- each source's layout ----------------------------------------------------

def _medseg_slices(root, n=10, seed=0):
  rng = np.random.default_rng(seed)
  for i in range(n):
    img = _slice(rng, 40 + i, 50)
    labels = np.zeros(img.shape, np.uint8)
    labels[5:12, 5:20], labels[20:30, 30:40] = 1, 2
    _save(f'{root}/train/images/{i}.jpg', img)
    _save(f'{root}/train/masks/{i}.png', (labels > 0) * 255)
    _save(f'{root}/train/masks_multiclass/{i}.png', labels, palette=True)


def test_medseg_slice_folders_palette_masks_deterministic(tmp_path):
  _medseg_slices(tmp_path / 'medseg')
  splits, path = _build('medseg_covid', tmp_path, tmp_path / 'medseg')
  again, _ = _build('medseg_covid', tmp_path, tmp_path / 'medseg', tag='again')
  assert {s: len(v) for s, v in splits.items()} == {'train': 8, 'validation': 2}
  _check_examples(splits, 'medseg_covid')
  for split in splits:
    assert [e['patient_id'] for e in splits[split]] == [e['patient_id'] for e in again[split]]
    assert all(np.array_equal(a['image'], b['image']) for a, b in zip(splits[split], again[split]))
  examples = splits['train'] + splits['validation']
  assert all(e['has_mask'] == 1 and e['label'] == 0 for e in examples)
  assert {1, 2} <= set(np.unique(np.stack([e['mask'] for e in examples])))
  assert _metadata(path)['notes'][-1] == 'masks from masks_multiclass/'
  capped, path = _build('medseg_covid', tmp_path, tmp_path / 'medseg', tag='capped',
                        max_examples_per_split=3)
  assert {s: len(v) for s, v in capped.items()} == {'train': 3, 'validation': 2}
  assert _metadata(path)['splits']['train'] == {'slices': 3, 'patients': 3, 'files': 3}


def test_medseg_nifti_release_maps_effusion_to_background(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / 'medseg_nii'
  vol = _hu_volume(rng, (24, 20, 10))
  mask = np.zeros(vol.shape, np.uint8)
  mask[4:8, 5:9], mask[14:18, 5:9], mask[2:4, 2:18] = 1, 2, 3
  _nifti(root / 'tr_im.nii.gz', vol)
  _nifti(root / 'tr_mask.nii.gz', mask)
  for k in range(3):
    _nifti(root / f'rp_im/{k + 1}.nii.gz', vol[..., :4])
    _nifti(root / f'rp_msk/{k + 1}.nii.gz', mask[..., :4])
  splits, path = _build('medseg_covid', tmp_path, root)
  _check_examples(splits, 'medseg_covid')
  tr = {s: [e for e in v if e['patient_id'].startswith('tr_im')] for s, v in splits.items()}
  assert {s: len(v) for s, v in tr.items()} == {'train': 8, 'validation': 2}
  rp = {s: {e['patient_id'] for e in v if e['patient_id'].startswith('rp_')}
        for s, v in splits.items()}
  assert len(rp['validation']) == 1 and len(rp['train']) == 2
  _no_patient_in_two_splits(splits)
  assert any(2 in e['mask'] for e in splits['train'])
  assert all(e['spacing'].min() > 0 for v in splits.values() for e in v)
  assert 'pleural effusion' in _metadata(path)['notes'][0]


def test_covid19_ct_seg_nifti_by_volume(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / 'ctseg'
  cases = [f'coronacases_org_00{i}' for i in range(1, 5)] + [
      'radiopaedia_org_covid-19-pneumonia-7_85703_0-dcm']
  for case in cases:
    vol = _hu_volume(rng, (24, 20, 3))
    if case.startswith('radio'):
      vol = np.clip((vol + 1000) / 1400 * 255, 0, 255)  # stored 0..255, as released
    infection = np.zeros(vol.shape, np.uint8)
    infection[5:9, 6:10] = 1
    _nifti(root / f'COVID-19-CT-Seg_20cases/{case}.nii.gz', vol)
    stem = case.replace('_org_covid-19-pneumonia-', '_').replace('_org_', '_')
    _nifti(root / f'Infection_Mask/{stem.removesuffix("-dcm")}.nii.gz', infection)
  splits, path = _build('covid19_ct_seg', tmp_path, root)
  _check_examples(splits, 'covid19_ct_seg')
  assert {s: len({e['patient_id'] for e in v}) for s, v in splits.items()} == {
      'train': 4, 'validation': 1}
  _no_patient_in_two_splits(splits)
  assert all(e['has_mask'] == 1 and e['label'] == 0 for v in splits.values() for e in v)
  assert _metadata(path)['volumes_8bit'] == [cases[-1] + '.nii.gz']


def test_covid19_ct_seg_slices_pseudo_masks_opt_in(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / 'pseudo'
  for v in range(5):
    for k in (1, 2, 10):
      _save(f'{root}/images/Data-1_case_org_00{v}_{k}.jpg', _slice(rng))
      _save(f'{root}/pseudo_masks/Data-1_case_org_00{v}_{k}.png', rng.integers(0, 256, (40, 56)))
  plain, path = _build('covid19_ct_seg', tmp_path, root)
  assert {s: len(v) for s, v in plain.items()} == {'train': 12, 'validation': 3}
  _no_patient_in_two_splits(plain)
  assert all(e['has_mask'] == 0 and e['label'] == 0 for v in plain.values() for e in v)
  assert _metadata(path)['source'] == 'covid19_ct_seg'
  assert all(e['has_soft_mask'] == 0 for v in plain.values() for e in v)
  pseudo, path = _build('covid19_ct_seg', tmp_path, root, tag='pseudo', use_pseudo_masks=True)
  # Pseudo labels are a feature of their own: never a ground-truth mask.
  assert all(e['has_mask'] == 0 and e['has_soft_mask'] == 1 for v in pseudo.values() for e in v)
  assert all(e['mask'].max() == 0 and 0 < e['soft_mask'].max() <= 1
             for v in pseudo.values() for e in v)
  assert _metadata(path)['source'] == 'covid19_ct_seg_pseudo'
  # A missing, an extra and a mis-sized pseudo mask: one error listing all three.
  os.remove(f'{root}/pseudo_masks/Data-1_case_org_000_1.png')
  _save(f'{root}/pseudo_masks/Data-1_case_org_009_1.png', np.zeros((40, 56)))
  _save(f'{root}/pseudo_masks/Data-1_case_org_001_2.png', np.zeros((10, 10)))
  with pytest.raises(BadInputError) as error:
    _build('covid19_ct_seg', tmp_path, root, tag='bad', use_pseudo_masks=True)
  _, lines = _bad_lines(error)
  for name, reason in (('images/Data-1_case_org_000_1.jpg', 'no pseudo mask'),
                       ('pseudo_masks/Data-1_case_org_009_1.png', 'mask without its image'),
                       ('pseudo_masks/Data-1_case_org_001_2.png', 'does not match')):
    assert any(name in line and reason in line for line in lines), (name, lines)


def _ucsd(root, test_list=True):
  rng = np.random.default_rng(0)
  lists = {'train': (['2020.01.01.1-p1-1.png', '2020.01.01.1-p1-2%0.png', '2020.02.02.2-p3-5.png'],
                     ['1%0.jpg', '1%1.jpg', '7.png']),
           'val': (['2020.03.03.3-p2-9.png'], ['20.png', '21.png']),
           'test': (['2020.04.04.4-p8-1.png'], ['30.jpg'])}
  for split, (covid, non) in lists.items():
    if split == 'test' and not test_list:
      continue
    for cls, names in (('COVID', covid), ('NonCOVID', non)):
      os.makedirs(root / 'splits', exist_ok=True)
      (root / f'splits/{split}CT_{cls}.txt').write_text('\n'.join(names) + '\n')
      for name in names:
        _save(f'{root}/images/CT_{cls}/{name}', np.stack([_slice(rng)] * 3, -1))
  os.makedirs(root / 'meta', exist_ok=True)
  (root / 'meta/NonCOVID-CT-MetaInfo.csv').write_text(
      ',image name,patient id\n0,1%0.jpg,p_a\n1,1%1.jpg,p_a\n2,7.png,p_b\n3,20.png,p_c\n'
      '4,21.png,p_c\n5,30.jpg,p_d\n')


def test_covid_ct_official_splits_and_label_sets(tmp_path):
  _ucsd(tmp_path / 'ucsd')
  splits, _ = _build('covid_ct', tmp_path, tmp_path / 'ucsd')
  assert {s: len(v) for s, v in splits.items()} == {'train': 6, 'validation': 3, 'test': 2}
  _check_examples(splits, 'covid_ct')
  _no_patient_in_two_splits(splits)
  for e in (e for v in splits.values() for e in v):
    if e['label'] == 0:
      assert e['patient_id'].startswith('2020.')
    else:
      assert e['label'] == -1 and e['has_label'] == 1
      assert tuple(e['label_set']) == features.NON_COVID and e['patient_id'].startswith('p_')
  _ucsd(tmp_path / 'ucsd2', test_list=False)
  splits, _ = _build('covid_ct', tmp_path, tmp_path / 'ucsd2', tag='no_test')
  assert set(splits) == {'train', 'validation'}


def test_covid_ct_listed_but_missing_files_are_all_listed(tmp_path):
  _ucsd(tmp_path / 'ucsd')
  os.remove(tmp_path / 'ucsd/images/CT_COVID/2020.02.02.2-p3-5.png')
  os.remove(tmp_path / 'ucsd/images/CT_NonCOVID/21.png')
  with pytest.raises(BadInputError) as error:
    _build('covid_ct', tmp_path, tmp_path / 'ucsd')
  head, lines = _bad_lines(error)
  assert head.startswith('covid_ct: 2 bad files in') and '--skip_bad' in head
  assert len(lines) == 2 and all('but missing' in line for line in lines)


def test_mosmed_slices_labels_by_folder(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / 'mosmed'
  for folder, n in (('ct0_normal', 6), ('ct1_covid', 6), ('ct2_covid', 3)):
    for i in range(n):
      _save(f'{root}/{folder}/img{i}.jpg', np.stack([_slice(rng, 48, 48)] * 3, -1))  # RGB gray
  splits, path = _build('mosmed', tmp_path, root)
  again, _ = _build('mosmed', tmp_path, root, tag='again')
  _check_examples(splits, 'mosmed')
  examples = [e for v in splits.values() for e in v]
  assert len(examples) == 15 and {s: len(v) for s, v in again.items()} == {
      s: len(v) for s, v in splits.items()}
  for e in examples:
    assert e['label'] == (1 if e['patient_id'].startswith('ct0') else 0)
  assert 'hash' in _metadata(path)['split_rule']


def test_mosmed_nifti_studies_with_optional_masks(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / 'mosmed_nii'
  for i in range(1, 6):
    _nifti(root / f'studies/CT-{0 if i < 3 else 2}/study_000{i}.nii.gz', _hu_volume(rng))
  mask = np.zeros((24, 20, 6), np.uint8)
  mask[5:8, 6:9] = 1
  _nifti(root / 'masks/study_0004_mask.nii.gz', mask)
  splits, _ = _build('mosmed', tmp_path, root)
  _check_examples(splits, 'mosmed')
  _no_patient_in_two_splits(splits)
  assert {s: len({e['patient_id'] for e in v}) for s, v in splits.items()} == {
      'train': 4, 'validation': 1}
  for e in (e for v in splits.values() for e in v):
    assert e['has_mask'] == (e['patient_id'] == 'study_0004')
    assert e['label'] == (1 if e['patient_id'] in ('study_0001', 'study_0002') else 0)
    assert e['spacing'][0] > 0


def test_sars_cov2_ct_and_china_negative(tmp_path):
  rng = np.random.default_rng(0)
  for i in range(5):
    _save(f'{tmp_path}/sars/covid/Covid ({i}).png', _slice(rng))
    _save(f'{tmp_path}/sars/non_covid/Non-Covid ({i}).png', _slice(rng))
    for k in range(3):
      _save(f'{tmp_path}/china/normal/nor_{i}_img_{k}.jpg', _slice(rng))
  splits, _ = _build('sars_cov2_ct', tmp_path, tmp_path / 'sars')
  labels = sorted(e['label'] for v in splits.values() for e in v)
  assert labels == [0] * 5 + [2] * 5
  splits, _ = _build('china_negative', tmp_path, tmp_path / 'china')
  _no_patient_in_two_splits(splits)
  assert {s: len(v) for s, v in splits.items()} == {'train': 12, 'validation': 3}
  assert all(e['label'] == 1 for v in splits.values() for e in v)


def _ct_folder(root, n=10):
  rng = np.random.default_rng(0)
  labels = ['covid19', 'normal', 'other', 'non_covid', ''] * 2
  rows = ['patient_id,label'] + [f'P{i},{labels[i % 10]}' for i in range(n)]
  os.makedirs(root, exist_ok=True)
  (root / 'labels.csv').write_text('\n'.join(rows) + '\n')
  for i in range(n):
    _nifti(root / f'images/P{i}.nii.gz', _hu_volume(rng))
  return rng


def test_ct_folder_nifti_and_dicom_agree_and_split_by_patient(tmp_path):
  root = tmp_path / 'hospital'
  rng = _ct_folder(root)
  vol = _hu_volume(rng)  # RAS (x, y, z); the marker is anterior-right
  vol[18:22, 14:18, :] = 400
  ras_to_display = np.transpose(vol, (2, 1, 0))[:, ::-1, ::-1]
  _nifti(root / 'images/P1.nii.gz', np.transpose(vol[::-1, ::-1], (1, 0, 2)), ODD_AFFINE)
  os.remove(root / 'images/P2.nii.gz')
  _dicom_series(root / 'images/P2', ras_to_display)
  mask = np.zeros(vol.shape, np.uint8)
  mask[5:8, 6:9] = 2
  _nifti(root / 'masks/P0.nii.gz', mask, ODD_AFFINE)
  no_lungs = _hu_volume(rng)
  no_lungs[:, :, :2] = np.where(no_lungs[:, :, :2] < -500, 40, no_lungs[:, :, :2])
  _nifti(root / 'images/P5.nii.gz', no_lungs)  # slices 0, 1: body without lungs
  splits, path = _build('ct_folder', tmp_path, root)
  _check_examples(splits, 'ct_folder')
  _no_patient_in_two_splits(splits)
  assert {s: len({e['patient_id'] for e in v}) for s, v in splits.items()} == {
      'train': 8, 'validation': 1, 'test': 1}
  by_patient = {}
  for e in (e for v in splits.values() for e in v):
    by_patient.setdefault(e['patient_id'], []).append(e)
  assert {len(v) for v in by_patient.values()} == {6}
  nifti, dicom = ([e['image'] for e in by_patient[p]] for p in ('P1', 'P2'))
  for image in nifti:  # the same slices, whether from NIfTI or DICOM
    assert min(np.abs(image - other).max() for other in dicom) < 0.01
  for image in nifti + dicom:  # radiological: anterior up, patient right on the left
    assert image[:SIZE // 2, :SIZE // 2].max() > 0.99 > image[SIZE // 2:, SIZE // 2:].max()
  assert all(e['has_mask'] == (p == 'P0') for p, v in by_patient.items() for e in v)
  labels = {p: (int(v[0]['label']), tuple(v[0]['label_set'])) for p, v in by_patient.items()}
  assert labels['P0'] == (0, (1, 0, 0)) and labels['P3'] == (-1, features.NON_COVID)
  assert labels['P4'] == (-1, (0, 0, 0)) and by_patient['P4'][0]['has_label'] == 0
  assert by_patient['P2'][0]['spacing'] == pytest.approx([0.7 * 24 / SIZE, 0.8 * 24 / SIZE], rel=1e-3)
  half, _ = _build('ct_folder', tmp_path, root, tag='half', every_nth_slice=2)
  assert sum(map(len, half.values())) == sum(map(len, splits.values())) // 2
  lungs, _ = _build('ct_folder', tmp_path, root, tag='lungs', lung_slices_only=True)
  counts = collections.Counter(e['patient_id'] for v in lungs.values() for e in v)
  assert counts['P5'] == 4 and counts['P0'] == 6
  assert _metadata(path)['splits']['test']['patients'] == 1


@pytest.mark.slow
def test_ct_folder_readme_commands_build_and_train(tmp_path, capsys):
  """README's "Bring your own CT": build-data ct_folder, then train on it
  alone by replacing the sources mapping from the command line."""
  from mtl_jax import cli  # pylint: disable=g-import-not-at-top
  _ct_folder(tmp_path / 'my_ct')
  data_dir = str(tmp_path / 'data')
  assert cli.main(['build-data', 'ct_folder', '--data_dir', data_dir, '--manual_dir',
                   str(tmp_path / 'my_ct'), '--image_size', str(SIZE)]) == 0
  workdir = str(tmp_path / 'mine')
  assert cli.main(['train', '--config', 'configs/default.py:tiny', '--workdir', workdir,
                   "--config.data.sources={'ct_folder': 1.0}",
                   "--config.data.eval_sources=('ct_folder',)",
                   f'--config.data.data_dir={data_dir}', '--config.train.num_train_steps=2',
                   '--config.eval.bootstrap_resamples=0']) == 0
  assert 'validation/recon_mse=' in capsys.readouterr().err  # evaluated on ct_folder
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['data']['sources'] == {'ct_folder': 1.0}


# -- bad inputs: one error listing every bad file; skip_bad records them ------

def test_bad_slices_listed_together_and_skippable(tmp_path):
  root = tmp_path / 'medseg'
  _medseg_slices(root, n=6)
  train = root / 'train'
  (train / 'images/0.jpg').write_bytes(b'not a jpeg at all')
  data = (train / 'images/1.jpg').read_bytes()
  (train / 'images/1.jpg').write_bytes(data[:len(data) // 2])  # truncated
  _save(f'{train}/masks_multiclass/2.png', np.zeros((10, 10)), palette=True)  # wrong shape
  _save(f'{train}/masks_multiclass/3.png', np.full((43, 50), 5), palette=True)  # label 5
  _save(f'{train}/images/9.jpg', np.random.default_rng(0).integers(0, 256, (40, 50, 3)))
  _save(f'{train}/masks_multiclass/9.png', np.zeros((40, 50)), palette=True)
  with pytest.raises(BadInputError) as error:
    _build('medseg_covid', tmp_path, root)
  head, lines = _bad_lines(error)
  assert head == f'medseg_covid: 5 bad files in {root} (use --skip_bad to build without them):'
  for name, reason in (('images/0.jpg', 'unreadable'), ('images/1.jpg', 'unreadable'),
                       ('masks_multiclass/2.png', 'does not match'),
                       ('masks_multiclass/3.png', 'unexpected mask labels [5]'),
                       ('images/9.jpg', 'colour image')):
    assert any(name in line and reason in line for line in lines), (name, lines)
  splits, path = _build('medseg_covid', tmp_path, root, tag='skip', skip_bad=True)
  assert sum(map(len, splits.values())) == 2
  skipped = _metadata(path)['skipped']
  assert len(skipped) == 5 and all(s['reason'] for s in skipped)


def test_bad_volumes_and_csv_listed_together_and_skippable(tmp_path):
  root = tmp_path / 'hospital'
  _ct_folder(root, n=6)
  with open(root / 'labels.csv', 'a') as f:
    f.write('P6,flu\nP7,normal\n')  # unknown label; no image for P7
  _nifti(root / 'images/P8.nii.gz', np.zeros((4, 4, 2)))  # not in labels.csv
  data = (root / 'images/P1.nii.gz').read_bytes()
  (root / 'images/P1.nii.gz').write_bytes(data[:len(data) // 2])  # truncated
  _nifti(root / 'images/P2.nii.gz', np.full((24, 20, 6), np.nan, np.float32))
  _nifti(root / 'images/P3.nii.gz', np.zeros((24, 20, 6, 2), np.float32) - 1000)  # 4-D
  _nifti(root / 'masks/P4.nii.gz', np.zeros((24, 20, 5), np.uint8))  # wrong geometry
  with pytest.raises(BadInputError) as error:
    _build('ct_folder', tmp_path, root)
  head, lines = _bad_lines(error)
  assert head.startswith('ct_folder: 7 bad files in')
  for what in ('line 8 (P6)', 'line 9 (P7)', 'P8.nii.gz', 'P1.nii.gz', 'P2.nii.gz',
               'P3.nii.gz', 'masks/P4.nii.gz'):
    assert sum(what in line for line in lines) == 1, (what, lines)
  splits, path = _build('ct_folder', tmp_path, root, tag='skip', skip_bad=True)
  assert {e['patient_id'] for v in splits.values() for e in v} == {'P0', 'P5'}
  assert len(_metadata(path)['skipped']) == 7


def test_empty_or_wrong_layout_names_the_expected_layout(tmp_path):
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(BadInputError, match='expected layout'):
    _build('sars_cov2_ct', tmp_path, tmp_path / 'empty')
  os.makedirs(tmp_path / 'wrong/stuff')
  (tmp_path / 'wrong/stuff/a.txt').write_text('x')
  with pytest.raises(BadInputError, match=r'(?s)expected layout.*labels.csv'):
    _build('ct_folder', tmp_path, tmp_path / 'wrong')
  with pytest.raises(BadInputError, match=r'(?s)missing folders non_covid.*expected layout'):
    shutil.copytree(tmp_path / 'wrong', tmp_path / 'sars/covid')
    _build('sars_cov2_ct', tmp_path, tmp_path / 'sars')


# -- the real samples in ../shared/data ---------------------------------------

def _real(name, tmp_path_factory, **kwargs):
  data_dir = tmp_path_factory.getbasetemp() / 'real'
  path = registry.build_dataset(name, str(data_dir), SIZE, **kwargs)
  splits = {s: datasets.load_split(name, s, str(data_dir), SIZE)
            for s in ('train', 'validation')}
  return {s: [src[i] for i in range(len(src))] for s, src in splits.items()}, path


def test_real_medseg_covid(shared_data, tmp_path_factory):
  splits, _ = _real('medseg_covid', tmp_path_factory)
  assert {s: len(v) for s, v in splits.items()} == {'train': 40, 'validation': 10}
  assert all(e['has_mask'] == 1 and e['label'] == 0 for v in splits.values() for e in v)
  assert {1, 2} <= set(np.unique(np.stack([e['mask'] for e in splits['train']])))


def test_real_covid_ct_official_lists(shared_data, tmp_path_factory):
  splits, _ = _real('covid_ct', tmp_path_factory)
  lists = shared_data / 'ucsd_covid_ct' / 'splits'
  count = lambda n: len([l for l in (lists / n).read_text().splitlines() if l.strip()])
  assert len(splits['train']) == count('trainCT_COVID.txt') + count('trainCT_NonCOVID.txt') == 425
  assert len(splits['validation']) == count('valCT_COVID.txt') + count('valCT_NonCOVID.txt') == 118
  assert sum(e['label'] == 0 for v in splits.values() for e in v) == 251
  _no_patient_in_two_splits(splits)


@pytest.mark.slow  # over 20 s on 2 cores
def test_real_slice_sources(shared_data, tmp_path_factory):
  expected = {'mosmed': {0: 810, 1: 254}, 'sars_cov2_ct': {0: 250, 2: 250},
              'china_negative': {1: 286}, 'covid19_ct_seg': {0: 1600}}
  for name, counts in expected.items():
    splits, path = _real(name, tmp_path_factory)
    labels = [int(e['label']) for v in splits.values() for e in v]
    assert {k: labels.count(k) for k in set(labels)} == counts, name
    assert 0.15 < len(splits['validation']) / len(labels) < 0.3, name
    assert _metadata(path)['skipped'] == []
  _no_patient_in_two_splits(_real('covid19_ct_seg', tmp_path_factory)[0])
  meta = _metadata(_real('covid19_ct_seg', tmp_path_factory)[1])
  assert meta['splits']['validation']['patients'] == 4
  assert _metadata(_real('china_negative', tmp_path_factory)[1])['splits']['validation'][
      'patients'] == 2


def test_cross_validation_folds_hold_out_disjoint_groups():
  from mtl_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from mtl_jax.tfds_builders import common  # pylint: disable=g-import-not-at-top
  groups = [f'slice_{i:02d}' for i in range(50)]
  held = [{g for g, s in common.split_by_permutation(groups, {'validation': 0.2}, 0, fold)
           .items() if s == 'validation'} for fold in range(5)]
  assert all(len(h) == 10 for h in held)
  assert set().union(*held) == set(groups)  # every slice held out exactly once
  assert held[0] == {g for g, s in common.split_by_permutation(
      groups, {'validation': 0.2}, 0).items() if s == 'validation'}  # fold 0: as before
  with pytest.raises(ConfigError, match='folds 0..4'):
    common.split_by_permutation(groups, {'validation': 0.2}, 0, 5)
  # 11 groups, 2 held out per fold: fold 5 would wrap round onto fold 0's.
  with pytest.raises(ConfigError, match='folds 0..4'):
    common.split_by_permutation(groups[:11], {'validation': 0.2}, 0, 5)
