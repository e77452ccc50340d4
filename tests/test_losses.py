"""Losses: masking by label availability, empty tasks, Dice limits, set labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import losses


def _seg_case(b=4, s=8, seed=0):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=(b, s, s, 1)), jnp.float32)
  masks = jnp.asarray(rng.integers(0, 2, size=(b, s, s)), jnp.int32)
  return logits, masks


def test_masked_mean_ignores_masked_examples_and_their_nans():
  values = jnp.array([1.0, 3.0, jnp.nan, 100.0])
  weight = jnp.array([1.0, 1.0, 0.0, 0.0])
  assert float(losses.masked_mean(values, weight)) == pytest.approx(2.0)
  grad = jax.grad(lambda v: losses.masked_mean(v, weight))(values)
  np.testing.assert_allclose(grad, [0.5, 0.5, 0.0, 0.0])


@pytest.mark.parametrize('fn', ['dice', 'ce', 'mse', 'cls'])
def test_empty_task_gives_zero_not_nan(fn):
  logits, masks = _seg_case()
  none = jnp.zeros(4)
  if fn == 'dice':
    value = losses.soft_dice_loss(logits, masks, none)
  elif fn == 'ce':
    value = losses.pixel_cross_entropy(logits, masks, none)
  elif fn == 'mse':
    value = losses.reconstruction_mse(logits, jnp.zeros_like(logits), none)
  else:
    value = losses.set_cross_entropy(jnp.ones((4, 3)), jnp.zeros((4, 3)), none)
  assert float(value) == 0.0


def test_masked_out_examples_give_zero_gradient_to_the_seg_head():
  logits, masks = _seg_case()
  weight = jnp.array([1.0, 0.0, 1.0, 0.0])
  loss = lambda l: (losses.soft_dice_loss(l, masks, weight)
                    + losses.pixel_cross_entropy(l, masks, weight))
  grad = jax.grad(loss)(logits)
  assert float(jnp.abs(grad[1]).sum()) == 0.0
  assert float(jnp.abs(grad[3]).sum()) == 0.0
  assert float(jnp.abs(grad[0]).sum()) > 0.0


def test_unlabelled_examples_give_zero_gradient_to_the_classifier():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3)), jnp.float32)
  label_set = jnp.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], jnp.float32)
  weight = jnp.array([1.0, 0.0, 1.0])  # example 2 also has an empty set
  grad = jax.grad(lambda l: losses.set_cross_entropy(l, label_set, weight))(logits)
  assert np.all(np.isfinite(grad))
  assert float(jnp.abs(grad[1]).sum()) == 0.0
  assert float(jnp.abs(grad[2]).sum()) == 0.0
  assert float(jnp.abs(grad[0]).sum()) > 0.0


def test_perfect_prediction_gives_dice_loss_near_zero():
  _, masks = _seg_case()
  logits = jnp.where(masks[..., None] > 0, 20.0, -20.0)
  assert float(losses.soft_dice_loss(logits, masks, jnp.ones(4))) < 1e-3
  assert float(losses.soft_dice_loss(-logits, masks, jnp.ones(4))) > 0.9


def test_multiclass_dice_and_ce():
  masks = jnp.array(np.random.default_rng(2).integers(0, 3, size=(2, 6, 6)))
  logits = jax.nn.one_hot(masks, 3) * 30.0
  assert float(losses.soft_dice_loss(logits, masks, jnp.ones(2))) < 1e-3
  assert float(losses.pixel_cross_entropy(logits, masks, jnp.ones(2))) < 1e-6


def test_set_label_is_minus_log_of_the_set_probability():
  logits = jnp.array([[2.0, 0.5, -1.0]])
  p = jax.nn.softmax(logits)[0]
  non_covid = losses.set_cross_entropy(logits, jnp.array([[0.0, 1.0, 1.0]]), jnp.ones(1))
  assert float(non_covid) == pytest.approx(-np.log(p[1] + p[2]), rel=1e-5)
  exact = losses.set_cross_entropy(logits, jnp.array([[1.0, 0.0, 0.0]]), jnp.ones(1))
  assert float(exact) == pytest.approx(-np.log(p[0]), rel=1e-5)
  # A full set carries no information: zero loss.
  full = losses.set_cross_entropy(logits, jnp.ones((1, 3)), jnp.ones(1))
  assert float(full) == pytest.approx(0.0, abs=1e-6)


def test_reconstruction_mse_per_example_mean():
  recon = jnp.zeros((2, 2, 2, 1))
  images = jnp.stack([jnp.ones((2, 2, 1)), 3 * jnp.ones((2, 2, 1))])
  assert float(losses.reconstruction_mse(recon, images, jnp.array([1.0, 0.0]))) == 1.0
  assert float(losses.reconstruction_mse(recon, images, jnp.ones(2))) == 5.0


def test_fixed_and_uncertainty_weighting():
  task_losses = {'seg': jnp.array(2.0), 'cls': jnp.array(4.0)}
  fixed = losses.combine_task_losses(task_losses, {'seg': 1.0, 'cls': 0.5})
  assert float(fixed) == 4.0
  log_vars = jnp.array([0.0, jnp.log(2.0)])
  learned = losses.combine_task_losses(task_losses, {}, log_vars, ('seg', 'cls'))
  assert float(learned) == pytest.approx(2.0 + 2.0 + np.log(2.0), rel=1e-6)
