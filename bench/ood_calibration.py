"""How often does `mtl-jax predict` flag a slice as out of distribution? Per source, and on non-CT.

  python bench/ood_calibration.py --checkpoint runs/real_cpu_e [--k 3] [--out bench/ood.json]

In distribution: every eval source's validation slices (held out from
training), exported as 8-bit PNG and run through `mtl-jax predict` as a user
would. Not CT: photographs and an MR slice shipped with matplotlib
(mpl-data/sample_data), a terrain map, noise, flat and gradient images, and
CT slices with a wrong window (narrow window: saturated; inverted). Each
input is scored by three rules:
  pooled    reconstruction error above the 99th percentile of the
            checkpoint's pooled reference (validation slices of all sources);
  by_source log reconstruction error above mean + k sd of *every* source's
            (a slice counts as in distribution when any one source explains it);
  features  encoder feature statistics (mtl_jax/ood.py, what predict uses when
            the checkpoint holds `ood_features`; computed here for checkpoints
            that predate it): fitted on training slices, threshold at the
            99th percentile of validation distances.
False alarms on the validation slices are measured two-fold for by_source
and features: each half is scored with a threshold (and, for by_source,
statistics) set on the other half.

A fixed window change is wrong for some sources and harmless for others
(each source's 8-bit rendering used its own window), so for the CT inputs
with a changed window the model's own output is the referee as well: an
input "breaks" the model when its predicted class differs from the
unaltered slice's or its COVID-19 probability moves by more than
BREAK_DELTA. The table after the first gives, per window change, how many
inputs break the model and how many of those, and of the others, are flagged.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtl_jax import evaluation, ood, predict  # noqa: E402
from mtl_jax.data import datasets  # noqa: E402
from mtl_jax.data.features import COVID  # noqa: E402


def _save(path, image01):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.round(np.clip(image01, 0, 1) * 255).astype(np.uint8)).save(path)


def _norm(a):
  a = np.asarray(a, np.float64)
  return (a - a.min()) / max(a.max() - a.min(), 1e-9)


def non_ct_images(ct_examples, rng) -> dict:
  """{kind: [images in [0, 1]]}."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  sample = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'sample_data')
  gray = lambda p: _norm(np.asarray(Image.open(p).convert('L'), np.float64))
  photos = [gray(os.path.join(sample, 'grace_hopper.jpg')),
            gray(os.path.join(sample, 'Minduka_Present_Blue_Pack.png'))]
  with gzip.open(os.path.join(sample, 's1045.ima.gz')) as f:
    mr = _norm(np.frombuffer(f.read(), np.uint16).reshape(256, 256))
  with np.load(os.path.join(sample, 'jacksboro_fault_dem.npz')) as f:
    terrain = _norm(f['elevation'])
  crops = lambda img: [img, img[::-1], img[:, ::-1],
                       img[img.shape[0] // 8:, img.shape[1] // 8:], img.T]
  size = 256
  noise = [rng.uniform(size=(size, size)) for _ in range(5)]
  noise += [np.clip(rng.normal(0.5, 0.2, (size, size)), 0, 1) for _ in range(5)]
  ramp = np.linspace(0, 1, size)
  flat = [np.full((size, size), v) for v in (0.1, 0.5, 0.9)] + [
      np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))]
  narrow = [np.clip((x - 0.35) / 0.3, 0, 1) for x in ct_examples]
  inverted = [1.0 - x for x in ct_examples]
  return {'photograph': [c for p in photos for c in crops(p)], 'MR': crops(mr),
          'terrain map': crops(terrain), 'noise': noise, 'flat or gradient': flat,
          'CT, narrow window': narrow, 'CT, inverted': inverted}


BREAK_DELTA = 0.2  # COVID-19 probability change that counts as a changed answer
ALTERED_CT = ('CT, narrow window', 'CT, inverted')


def predict_values(checkpoint, folder, predictor) -> tuple:
  """(reconstruction errors, pooled-rule flags, feature distances, classifications)
  of a folder's inputs, in file-name order."""
  reports = predict.run(checkpoint, folder, folder + '_out', predictor=predictor)
  reports = sorted(reports, key=lambda r: r['input']['path'])
  oods = [r['ood'] for r in reports]
  recon = [o['reconstruction_error'] for o in oods]  # report schema 1.4
  return ([o['value'] for o in recon], [o['value'] > o['threshold_value'] for o in recon],
          [o['feature_distance'] for o in oods], [r['classification'] for r in reports])


def breaks(original: dict, altered: dict) -> bool:
  """Does the altered input change the model's answer (class, or COVID-19 probability)?"""
  covid = lambda c: c['probabilities'][c['class_names'][COVID]]
  return (original['predicted_class'] != altered['predicted_class']
          or abs(covid(original) - covid(altered)) > BREAK_DELTA)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--checkpoint', required=True)
  parser.add_argument('--k', type=float, default=3.0)
  parser.add_argument('--out', default=None)
  parser.add_argument('--refit', action='store_true',
                      help="refit the checkpoint's feature reference with this code's "
                           'mtl_jax/ood.py (as a checkpoint saved now would have it)')
  args = parser.parse_args(argv)
  predictor = predict.Predictor(args.checkpoint)
  config = predictor.runtime.config
  if args.refit or not predictor.meta.get('ood_features'):  # or from before mtl_jax/ood.py
    predictor.meta['ood_features'] = evaluation.reference_features(predictor.runtime,
                                                                   predictor.variables)
  rng = np.random.default_rng(0)
  values, pooled_flags, feature, answers = {}, {}, {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    ct_examples = []
    for source in config.data.eval_sources:
      split = datasets.load_split(source, 'validation', config.data.data_dir,
                                  config.data.image_size)
      for i in range(len(split)):
        image = split[i]['image']
        _save(f'{tmp}/{source}/{i:05d}.png', image)
        if source in ('mosmed', 'covid19_ct_seg') and i % 50 == 0:
          ct_examples.append(image)
      values[source], pooled_flags[source], feature[source], _ = predict_values(
          args.checkpoint, f'{tmp}/{source}', predictor)
    for i, image in enumerate(ct_examples):
      _save(f'{tmp}/ct_unaltered/{i:03d}.png', image)
    answers['CT'] = predict_values(args.checkpoint, f'{tmp}/ct_unaltered', predictor)[3]
    kinds = non_ct_images(ct_examples, rng)
    for kind, images in kinds.items():
      folder = f'{tmp}/non_ct_{kind.replace(" ", "_").replace(",", "")}'
      for i, image in enumerate(images):
        _save(f'{folder}/{i:03d}.png', image)
      values[kind], pooled_flags[kind], feature[kind], answers[kind] = predict_values(
          args.checkpoint, folder, predictor)
  sources = list(config.data.eval_sources)
  logs = {s: np.log(np.asarray(values[s])) for s in sources}

  def threshold(stats):  # in distribution when any source explains the value
    return max(m + args.k * sd for m, sd in stats.values())

  full = {s: (logs[s].mean(), logs[s].std(ddof=1)) for s in sources}
  rows = []
  dist = {name: np.asarray(v, np.float64) for name, v in feature.items()}
  for s in sources:
    alarms, feature_alarms = 0, 0
    for half in (0, 1):  # fit on one half of s (others whole), score the other
      fit = dict(full)
      held = logs[s][half::2]
      fit[s] = (logs[s][1 - half::2].mean(), logs[s][1 - half::2].std(ddof=1))
      alarms += int(np.sum(held > threshold(fit)))
      other = np.concatenate([dist[t][1 - half::2] for t in sources])
      feature_alarms += int(np.sum(dist[s][half::2] >
                                   np.percentile(other, ood.THRESHOLD_PERCENTILE)))
    rows.append((s, len(logs[s]), np.mean(pooled_flags[s]), alarms / len(logs[s]),
                 feature_alarms / len(logs[s])))
  limit = predictor.meta['ood_features']['threshold']
  for kind in kinds:
    rows.append((kind, len(values[kind]), np.mean(pooled_flags[kind]),
                 float(np.mean(np.log(values[kind]) > threshold(full))),
                 float(np.mean(dist[kind] > limit))))
  print(f'checkpoint {args.checkpoint}; by_source rule: log MSE > max over sources of '
        f'(mean + {args.k:g} sd)\n')
  print('| input | slices | flagged: pooled recon p99 | by_source recon | encoder features |')
  print('|---|---|---|---|---|')
  for name, n, pooled, by_source, features in rows:
    print(f'| {name} | {n} | {pooled:.1%} | {by_source:.1%} | {features:.1%} |')
  print('\n| window change | inputs | the model\'s answer breaks | flagged when it breaks |'
        ' flagged when it holds |\n|---|---|---|---|---|')
  altered = {}
  for kind in ALTERED_CT:
    broke = np.array([breaks(o, a) for o, a in zip(answers['CT'], answers[kind])])
    flagged = dist[kind] > limit
    altered[kind] = {'broke': broke.tolist(), 'flagged': flagged.tolist()}
    held = lambda mask: f'{int(flagged[mask].sum())} of {int(mask.sum())}'
    print(f'| {kind} | {len(broke)} | {int(broke.sum())} | {held(broke)} | {held(~broke)} |')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'k': args.k, 'rows': rows, 'values': values, 'feature_distances': feature,
                 'log_stats': {s: list(v) for s, v in full.items()},
                 'altered_ct': altered}, f, indent=1)


if __name__ == '__main__':
  main()
