"""The out-of-distribution score from encoder feature statistics (mtl_jax/ood.py)."""

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
