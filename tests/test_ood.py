"""The out-of-distribution score from encoder feature statistics (mtl_jax/ood.py)."""

import json

import numpy as np

from mtl_jax import ood


BASIS = np.random.default_rng(42).normal(size=(4, 40))


def _clusters(rng, n):
  """Two 'sources' in 40 dimensions, correlated within a 4-dimensional subspace."""
  make = lambda centre: centre + rng.normal(size=(n, 4)) @ BASIS + 0.1 * rng.normal(size=(n, 40))
  return {'a': make(np.zeros(40)), 'b': make(np.full(40, 3.0))}, BASIS


def test_held_out_slices_pass_and_other_inputs_are_flagged():
  rng = np.random.default_rng(0)
  train, basis = _clusters(rng, 300)
  held, _ = _clusters(np.random.default_rng(1), 200)  # new slices of the same sources
  reference = ood.calibrate(ood.fit(train, num_components=8), held)
  assert reference['threshold'] > 0 and len(reference['components']) == 8
  fresh, _ = _clusters(np.random.default_rng(2), 500)
  alarms = np.mean(ood.distances(fresh['a'], reference) > reference['threshold'])
  assert alarms < 0.05
  # Off the sources' subspace (a direction the training data never varies in),
  # or between the two sources: flagged.
  off = train['a'][:50] + 2.0 * np.linalg.svd(basis)[2][-1]
  between = (train['a'][:50] + train['b'][:50]) / 2
  assert np.all(ood.distances(off, reference) > reference['threshold'])
  assert np.all(ood.distances(between, reference) > reference['threshold'])
  study = ood.score(off, reference)
  assert study['flagged'] and study['feature_distance'] > study['feature_threshold']


def test_reference_is_json_and_round_trips():
  import json  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  train, _ = _clusters(rng, 50)
  reference = ood.calibrate(ood.fit(train), train)
  again = json.loads(json.dumps(reference))
  x = train['b'][:5]
  np.testing.assert_allclose(ood.distances(x, again), ood.distances(x, reference), rtol=1e-5)


def test_training_reuses_its_validation_pass_for_the_reference(predictor, monkeypatch):
  """The reference a best checkpoint stores is the same whether its
  validation slices are run again or taken from the evaluation pass just
  made (training takes them from the pass: one fewer sweep per new best)."""
  from mtl_jax import evaluation  # pylint: disable=g-import-not-at-top
  runtime, variables = predictor.runtime, predictor.variables
  predict = runtime.predict_fn(extras=True)
  held_out = {}
  evaluation.evaluate(runtime, predict, variables, 'validation', -1, held_out)
  assert set(held_out) == set(runtime.config.data.eval_sources)
  passes = []  # (function, split) of every sweep over a split the reference makes
  for name in ('_run', '_features'):
    original = getattr(evaluation, name)
    def counted(rt, *args, _name=name, _original=original, **kw):
      passes.append((_name, args[2] if _name == '_run' else args[1]))
      return _original(rt, *args, **kw)
    monkeypatch.setattr(evaluation, name, counted)
  for kwargs in ({'held_out': held_out}, {}):
    passes.clear()
    errors = evaluation.reference_recon_errors(runtime, predict, variables, 16, **kwargs)
    features = evaluation.reference_features(runtime, variables, 8, 16, **kwargs)
    validation_passes = [p for p in passes if p[1] == 'validation']
    if kwargs:
      reused = (errors, features)
      assert not validation_passes  # taken from the pass, not recomputed
    else:
      assert {p[0] for p in validation_passes} == {'_run', '_features'}
  np.testing.assert_allclose(reused[0]['percentiles'], errors['percentiles'], rtol=1e-6)
  assert reused[0]['num_examples'] == errors['num_examples'] == 16
  assert json.dumps(reused[1], sort_keys=True) == json.dumps(features, sort_keys=True)
  # A pass over fewer slices than the reference needs is not reused.
  few = {}
  evaluation.evaluate(runtime, predict, variables, 'validation', 4, few)
  assert evaluation._held_out_prefix(few, 'synthetic_ct', 'features', 16) is None  # pylint: disable=protected-access


def test_a_wide_source_is_not_flagged_for_its_spread():
  """One threshold for all sources flags a source whose slices spread wider
  and are few among the held-out slices (MedSeg: 10 of ~900); each source's
  distances relative to its own median held-out distance do not, and inputs
  off every source stay flagged."""
  rng = np.random.default_rng(0)
  def make(r, n, centre, spread):
    return centre + spread * (r.normal(size=(n, 4)) @ BASIS + 0.1 * r.normal(size=(n, 40)))
  sources = lambda r, n, n_wide: {'tight': make(r, n, np.zeros(40), 1.0),
                                  'wide': make(r, n_wide, np.full(40, 8.0), 2.0)}
  train, held = sources(rng, 300, 300), sources(np.random.default_rng(1), 400, 20)
  fresh = sources(np.random.default_rng(2), 400, 400)
  reference = ood.calibrate(ood.fit(train, num_components=8), held)
  scales = reference['source_scales']
  assert scales[1] > 1.5 * scales[0]  # 'wide' spreads about twice as far
  plain = dict(reference, source_scales=None)
  plain['threshold'] = float(np.percentile(
      np.concatenate([ood.distances(f, plain) for f in held.values()]), ood.THRESHOLD_PERCENTILE))
  alarms = lambda ref, x: float(np.mean(ood.distances(x, ref) > ref['threshold']))
  assert alarms(plain, fresh['wide']) > 0.02  # one threshold: the wide source pays
  assert alarms(reference, fresh['wide']) < 0.02
  assert alarms(reference, fresh['tight']) < 0.02
  off = train['tight'][:50] + 3.0 * np.linalg.svd(BASIS)[2][-1]
  assert alarms(reference, off) == 1.0


def test_a_reference_without_scales_scores_plain_distances():
  """Checkpoints saved before `source_scales` keep the rule they were calibrated with."""
  rng = np.random.default_rng(0)
  train, _ = _clusters(rng, 100)
  reference = ood.fit(train, num_components=8)
  x = train['a'][:7]
  np.testing.assert_allclose(ood.distances(x, reference),
                             ood.source_distances(x, reference).min(-1))
  assert 'source_scales' not in reference
