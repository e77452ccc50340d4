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
