"""One record of preprocessing: the builder writes it, training checks and stores
it, predict replays it; evaluate and predict agree on the same slices."""

import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mtl_jax import checkpointing, cli, errors, predict, runtime, volume_io
from mtl_jax.config import loader
from mtl_jax.data import pipeline, preprocess, synthetic
from mtl_jax.tfds_builders import registry

from conftest import REPO

WINDOW = (-1350.0, 150.0)  # not the default lung window


def _tiny(data_dir, **data):
  config = loader.load_config(str(REPO / 'configs' / 'default.py') + ':tiny')
  config.data.data_dir = str(data_dir)
  for key, value in data.items():  # replace, not merge (sources is a mapping)
    setattr(config.data, key, value)
  config.train.num_train_steps = 2
  config.train.eval_every_steps = config.train.checkpoint_every_steps = 2
  config.eval.bootstrap_resamples = 0
  return config


@pytest.mark.slow
def test_the_built_window_is_trained_and_replayed(tmp_path, capsys):
  data_dir = tmp_path / 'data'
  registry.build_dataset('synthetic_ct', str(data_dir), 64, num_train=16,
                         num_validation=8, num_test=8, window_hu=WINDOW)
  capsys.readouterr()
  # The config's default window contradicts the data: one line, no workdir.
  workdir = tmp_path / 'run'
  code = cli.main(['train', '--config', 'configs/default.py:tiny', '--workdir', str(workdir),
                   f'--config.data.data_dir={data_dir}'])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1
  assert 'window_hu=[-1000.0, 400.0] but the data' in err and '[-1350.0, 150.0]' in err
  assert not workdir.exists()

  from mtl_jax import train  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate(_tiny(data_dir, window_hu=WINDOW), str(workdir))
  meta, _ = checkpointing.read_meta(str(workdir))
  prep = meta['preprocessing']
  assert prep['window_hu'] == list(WINDOW)
  assert prep['built']['synthetic_ct']['window_hu'] == list(WINDOW)
  assert prep['built']['synthetic_ct']['input_kinds'] == ['hu']

  predictor = predict.Predictor(str(workdir), batch_size=8)
  hu = np.linspace(-1500, 300, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3)
  render, _, _ = predictor.replay.renderer('hu')
  np.testing.assert_allclose(render(hu[:, :, 0]), preprocess.window_hu(hu[:, :, 0], *WINDOW))
  nib.save(nib.Nifti1Image(hu.astype(np.int16), np.eye(4)), str(tmp_path / 'v.nii.gz'))
  report = predict.run(str(workdir), tmp_path / 'v.nii.gz', tmp_path / 'out',
                       predictor=predictor)[0]
  assert report['preprocessing']['window_hu'] == list(WINDOW)

  # Another window into the same folder would mix two renderings: refused.
  with pytest.raises(errors.DatasetNotFoundError, match='built with window_hu'):
    registry.build_dataset('synthetic_ct', str(data_dir), 64, window_hu=(-1000.0, 400.0))


@pytest.mark.slow
def test_evaluate_and_predict_agree_on_the_same_slices(tmp_path):
  """The same PNG slices through `evaluate`'s path (built dataset, pipeline)
  and `predict`'s (file, replay) give the same class probabilities. With
  'per_image' standardisation (what a single scan allows) they agree to the
  uint16 storage of built slices; 'per_source' would differ by design
  (docs/data.md: predict standardises a study by its own statistics)."""
  rng = np.random.default_rng(0)
  root = tmp_path / 'sars'
  for i in range(8):
    kind, folder = (('covid19', 'covid') if i % 2 else ('normal', 'non_covid'))
    hu, _ = synthetic.generate_slice(rng, kind, 96)
    image = np.round(preprocess.window_hu(hu) * 255).astype(np.uint8)[:, 6:-10]
    os.makedirs(root / folder, exist_ok=True)
    Image.fromarray(image).save(root / folder / f'slice_{i}.png')  # 96 x 80: padded
  data_dir = tmp_path / 'data'
  registry.build_dataset('sars_cov2_ct', str(data_dir), 64, manual_dir=str(root))
  config = _tiny(data_dir, sources={'sars_cov2_ct': 1.0}, eval_sources=('sars_cov2_ct',),
                 input_kind='8bit', standardize='per_image')
  from mtl_jax import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)

  loaded = runtime.load(workdir)
  apply = loaded.runtime.predict_fn()
  evaluated = {}  # file name -> (model input, class probabilities, lesion probability)
  for split in ('train', 'validation'):
    for batch in pipeline.eval_batches(loaded.runtime.config, split, 8, 'sars_cov2_ct'):
      out = apply(loaded.variables, batch['image'])
      for i, (pid, valid) in enumerate(zip(batch['patient_id'], batch['valid'])):
        if valid:
          evaluated[os.path.basename(str(pid))] = (
              batch['image'][i], np.asarray(out['cls_probs'][i]), np.asarray(out['seg_prob'][i]))
  assert len(evaluated) == 8

  predictor = predict.Predictor(workdir, batch_size=8)
  for folder in ('covid', 'non_covid'):
    for path in sorted((root / folder).iterdir()):
      study = volume_io.read_study(path)
      report = predictor.predict_study(study, tmp_path / 'out' / path.stem)
      predicted = np.array(list(report['slices'][0]['probabilities'].values()))
      image, probs, lesion = evaluated[next(k for k in evaluated if path.stem in k)]
      np.testing.assert_allclose(predicted, probs, atol=2e-3, err_msg=path.name)
      # The model inputs themselves, and so the lesion probabilities, agree.
      render, _, _ = predictor.replay.renderer(study.intensity)
      model_input = lambda k: predictor.replay.model_input(render(study.slice(k)))
      standardize, _ = predictor.replay.standardizer(study, model_input)
      replayed = standardize(model_input(0)[0])
      np.testing.assert_allclose(replayed, image, atol=1e-3, err_msg=path.name)
      batch = np.zeros((8,) + replayed.shape, np.float32)
      batch[0] = replayed
      np.testing.assert_allclose(predictor.predict_batch(batch)['seg'][0], lesion, atol=2e-3)
