"""Model shapes and heads per ablation; configs, presets and overrides."""

import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models
from mtl_jax.config import ingredients, loader, schema
from mtl_jax import tasks as tasks_lib
from mtl_jax.models import Upsample2x

from conftest import REPO


def _tiny_model(tasks=('seg', 'recon', 'cls'), num_seg_classes=1, norm='batch',
                uncertainty_weighting=False):
  config = schema.get_config('tiny')
  config.model.update(widths=(4, 8), bottleneck=8, cls_hidden=(8,),
                      num_seg_classes=num_seg_classes, norm=norm)
  config.loss.uncertainty_weighting = uncertainty_weighting
  config.loss.weights = {t: float(t in tasks) for t in ('seg', 'recon', 'cls')}
  return models.build_model(config, tasks_lib.make_tasks(config))


def test_heads_and_shapes():
  model = _tiny_model(num_seg_classes=3)
  x = jnp.zeros((2, 32, 32, 1))
  variables = model.init(jax.random.key(0), x)
  out = model.apply(variables, x)
  assert out['seg_logits'].shape == (2, 32, 32, 3)
  assert out['recon'].shape == (2, 32, 32, 1)
  assert out['cls_logits'].shape == (2, 3)
  assert set(variables) == {'params', 'batch_stats'}


@pytest.mark.parametrize('tasks,heads', [
    (('seg',), {'seg_decoder'}),
    (('cls',), {'classifier'}),
    (('seg', 'cls'), {'seg_decoder', 'classifier'}),
])
def test_ablations_build_only_their_heads(tasks, heads):
  variables = _tiny_model(tasks).init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
  assert set(variables['params']) == {'encoder'} | heads


def test_reconstruction_decoder_has_no_skips():
  """The recon decoder sees only the bottleneck: changing skips changes nothing."""
  model = _tiny_model(('recon',))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
  convs = variables['params']['recon_decoder']
  # Each ConvBlock's first conv takes exactly the up-sampled width (no concat).
  assert convs['ConvBlock_0']['Conv_0']['kernel'].shape[2] == 8
  seg = _tiny_model(('seg',)).init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
  assert seg['params']['seg_decoder']['ConvBlock_0']['Conv_0']['kernel'].shape[2] == 16


def test_upsample_matmul_equals_conv_transpose():
  x = jax.random.normal(jax.random.key(1), (2, 5, 7, 3))
  ours = Upsample2x(4)
  params = ours.init(jax.random.key(2), x)['params']
  kernel = params['Dense_0']['kernel'].reshape(3, 2, 2, 4)  # (in, dy, dx, out)
  reference = nn.ConvTranspose(4, (2, 2), strides=(2, 2), padding='VALID',
                               transpose_kernel=False)
  bias = jax.random.normal(jax.random.key(3), (4,))
  params = {'Dense_0': params['Dense_0'], 'bias': bias}
  # lax.conv_transpose indexes the 2x2 kernel flipped relative to ours.
  ref_params = {'kernel': kernel.transpose(1, 2, 0, 3)[::-1, ::-1], 'bias': bias}
  np.testing.assert_allclose(ours.apply({'params': params}, x),
                             reference.apply({'params': ref_params}, x),
                             rtol=1e-5, atol=1e-5)


def test_max_pool_reshape_equals_flax_max_pool_with_gradient():
  x = jax.random.normal(jax.random.key(4), (2, 8, 6, 3))
  loss = lambda pool: lambda v: jnp.sum(jnp.cos(pool(v)))
  flax_pool = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(models.max_pool_2x2(x), flax_pool(x))
  np.testing.assert_allclose(jax.grad(loss(models.max_pool_2x2))(x),
                             jax.grad(loss(flax_pool))(x), rtol=1e-6)


def test_group_norm_and_uncertainty_weighting():
  model = _tiny_model(norm='group', uncertainty_weighting=True)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
  assert 'batch_stats' not in variables
  out = model.apply(variables, jnp.zeros((1, 16, 16, 1)))
  assert out['task_log_vars'].shape == (3,)


def test_paper_size_parameter_count():
  config = schema.get_config('full')
  model = models.build_model(config, tasks_lib.make_tasks(config))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 256, 256, 1)))
  count = sum(np.prod(p.shape) for p in jax.tree.leaves(shapes['params']))
  assert count == 10_160_037  # the figure the README states


@pytest.mark.parametrize('preset', schema.PRESETS + ('seg_only,demo', 'no_recon,tiny'))
def test_every_preset_loads(preset):
  config = loader.load_config(f'{REPO}/configs/default.py:{preset}')
  assert config.preset == preset
  tasks = tasks_lib.make_tasks(config)
  model = models.build_model(config, tasks)
  size = 2 ** len(config.model.widths)  # the smallest input the preset's U-Net takes
  images = jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  out = jax.eval_shape(model.apply, variables, images)
  expected = {'seg': 'seg_logits', 'recon': 'recon', 'cls': 'cls_logits'}
  assert set(tasks) <= set(expected)
  assert {expected[t] for t in tasks} <= set(out)  # every enabled task has its head
  assert not {expected[t] for t in set(expected) - set(tasks)} & set(out)


@pytest.mark.parametrize('name', ['gpu8.py', 'tpu.py'])
def test_hardware_configs_are_deltas(name):
  config = loader.load_config(f'{REPO}/configs/{name}')
  base = schema.get_config()
  assert config.model.widths == base.model.widths
  assert config.train.global_batch_size > base.train.global_batch_size


def test_unknown_preset_lists_valid_ones():
  with pytest.raises(loader.ConfigError, match='valid presets: full, demo'):
    loader.load_config(f'{REPO}/configs/default.py:huge')


def test_overrides_parse_and_validate():
  config = loader.load_config(
      f'{REPO}/configs/default.py:tiny',
      ['--config.optim.learning_rate=0.5', '--config.model.widths=(4,8)',
       '--config.model.norm=group', '--config.train.progress_bar=true'])
  assert config.optim.learning_rate == 0.5
  assert config.model.widths == (4, 8)
  assert config.model.norm == 'group'
  assert config.train.progress_bar is True
  with pytest.raises(loader.ConfigError, match='unknown config key .*valid keys'):
    loader.load_config(f'{REPO}/configs/default.py', ['--config.optim.lr=1'])
  with pytest.raises(loader.ConfigError, match='cannot parse .abc.'):
    loader.load_config(f'{REPO}/configs/default.py',
                              ['--config.train.num_train_steps=abc'])
  with pytest.raises(loader.ConfigError, match='expected a int'):
    loader.load_config(f'{REPO}/configs/default.py',
                              ['--config.train.num_train_steps=1.5'])


def test_overrides_of_name_to_weight_mappings():
  """README's bring-your-own-CT command replaces the training sources
  wholesale; an entry can also be added or reweighted on its own."""
  config = loader.load_config(
      f'{REPO}/configs/default.py',
      ["--config.data.sources={'ct_folder': 1}", "--config.data.eval_sources=('ct_folder',)"])
  assert dict(config.data.sources) == {'ct_folder': 1.0}
  assert isinstance(config.data.sources.ct_folder, float)
  assert config.data.eval_sources == ('ct_folder',)
  config = loader.load_config(
      f'{REPO}/configs/default.py',
      ['--config.data.sources.mosmed=0.5', '--config.loss.weights.recon=0'])
  assert dict(config.data.sources) == {'synthetic_ct': 1.0, 'mosmed': 0.5}
  assert config.loss.weights.recon == 0.0
  for bad, match in (("--config.data.sources=['ct_folder']", 'mapping of names to weights'),
                     ("--config.data.sources={'ct_folder': 'high'}", 'expected a number'),
                     ('--config.loss.weights.seg=true', 'expected a number')):
    with pytest.raises(loader.ConfigError, match=match):
      loader.load_config(f'{REPO}/configs/default.py', [bad])


def test_missing_and_malformed_config_files(tmp_path):
  with pytest.raises(loader.ConfigError, match='not found'):
    loader.load_config(str(tmp_path / 'nope.py'))
  bad = tmp_path / 'bad.py'
  bad.write_text('def get_config(:\n')
  with pytest.raises(loader.ConfigError, match='malformed'):
    loader.load_config(str(bad))


@pytest.mark.parametrize('preset', ['cpu', 'gpu', 'tpu', 'cpu,tiny'])
def test_real_data_presets_load(preset):
  config = loader.load_config(f'{REPO}/configs/real.py:{preset}')
  assert set(config.data.sources) == set(config.data.eval_sources)
  assert config.data.input_kind == '8bit'
  assert abs(sum(config.data.sources.values()) - 1.0) < 1e-6
  with pytest.raises(loader.ConfigError, match='give one of cpu, gpu, tpu'):
    loader.load_config(f'{REPO}/configs/real.py:v100')


def test_saved_config_gains_new_fields_but_keeps_its_values():
  """A checkpoint written before a config field existed still loads."""
  saved = json.loads(loader.to_json(schema.get_config('tiny')))
  del saved['data']['standardize'], saved['data']['balance_classes']
  saved['data']['sources'] = {'medseg_covid': 1.0}
  config = loader.from_dict(saved)
  assert config.data.standardize == 'none' and config.data.balance_classes is False
  assert dict(config.data.sources) == {'medseg_covid': 1.0}  # not merged with defaults
  assert tuple(config.model.widths) == tuple(saved['model']['widths'])
  assert set(config.legacy_fields) == {'data.standardize', 'data.balance_classes'}


def test_saved_config_is_never_completed_from_todays_defaults():
  saved = json.loads(loader.to_json(schema.get_config('tiny')))
  # A field with no recorded old value: refused, not filled with today's value.
  del saved['train']['best_metric']
  with pytest.raises(loader.ConfigError, match='lacks train.best_metric'):
    loader.from_dict(saved)
  # The oldest format: a single eval_source, none of the later fields.
  saved = json.loads(loader.to_json(schema.get_config('tiny')))
  saved['data']['eval_source'] = saved['data'].pop('eval_sources')[0]
  for key in loader.LEGACY_DEFAULTS:
    *sections, field = key.split('.')
    node = saved
    for section in sections:
      node = node[section]
    del node[field]
  config = loader.from_dict(saved)
  assert tuple(config.data.eval_sources) == ('synthetic_ct',)
  assert config.data.input_kind == 'hu' and config.data.lung_crop is False
  assert 'data.eval_source -> data.eval_sources' in config.legacy_fields


def _convolutions_in_ynn_fusions(hlo: str) -> int:
  """Convolutions inside the computations that compiled HLO hands to YNNPACK."""
  called = set(re.findall(r'%ynn_fusion[.\d]* = .*?calls=(%[\w.]+)', hlo))
  return sum(block.count(' convolution(') for block in hlo.split('\n\n')
             if block.lstrip().split(' ', 1)[0] in called)


def test_train_step_compiler_options_only_on_cpu_and_never_over_the_user():
  from mtl_jax import train, xla_cpu  # pylint: disable=g-import-not-at-top
  assert xla_cpu.train_compiler_options({}, 'cpu') == xla_cpu.TRAIN_OPTIONS
  assert xla_cpu.train_compiler_options({}, 'gpu') == {}
  assert xla_cpu.train_compiler_options({'MTL_XLA_CPU_DEFAULTS': '0'}, 'cpu') == {}
  mine = {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=individual_dot'}
  assert xla_cpu.train_compiler_options(mine, 'cpu') == {}
  # The train step compiles with them: its convolutions are not YNNPACK fusions,
  # the eval step's are.
  config = schema.get_config('tiny')
  config.train.global_batch_size = config.eval.batch_size = 8
  trainer = train.Trainer(config)
  state = trainer.init(jax.random.key(0))
  size = config.data.image_size
  batch = {'image': np.zeros((8, size, size), np.float32),
           'mask': np.zeros((8, size, size), np.int32), 'has_mask': np.ones(8, np.float32),
           'label': np.zeros(8, np.int32), 'label_set': np.eye(3, dtype=np.float32)[[0] * 8],
           'has_label': np.ones(8, np.float32), 'valid': np.ones(8, np.float32)}
  train_hlo = trainer.train_step.lower(state, batch).compile().as_text()
  eval_hlo = trainer.predict.lower(train.variables_of(state), batch['image']).compile().as_text()
  assert ' convolution(' in train_hlo
  assert _convolutions_in_ynn_fusions(train_hlo) == 0 < _convolutions_in_ynn_fusions(eval_hlo)


def test_train_step_compiler_options_do_not_change_what_is_learned(monkeypatch):
  """Eigen and YNNPACK convolutions are the same maths: three steps on the
  same batches give the same losses and parameters (float tolerance), so the
  faster variant trains to the same quality."""
  from mtl_jax import parallel, train  # pylint: disable=g-import-not-at-top
  config = schema.get_config('tiny')
  config.train.global_batch_size = 8
  rng = np.random.default_rng(0)
  size = config.data.image_size
  batches = [{'image': rng.random((8, size, size), np.float32),
              'mask': (rng.random((8, size, size)) > 0.7).astype(np.int32),
              'has_mask': np.ones(8, np.float32), 'label': rng.integers(0, 3, 8).astype(np.int32),
              'label_set': np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)],
              'has_label': np.ones(8, np.float32), 'valid': np.ones(8, np.float32)}
             for _ in range(3)]
  runs, on_ynn = [], []
  for defaults in ('1', '0'):
    monkeypatch.setenv('MTL_XLA_CPU_DEFAULTS', defaults)
    trainer = train.Trainer(config)
    state = trainer.init(jax.random.key(0))
    hlo = trainer.train_step.lower(state, parallel.global_batch(batches[0], trainer.mesh))
    on_ynn.append(_convolutions_in_ynn_fusions(hlo.compile().as_text()))
    losses = []
    for batch in batches:
      state, terms = trainer.train_step(state, parallel.global_batch(batch, trainer.mesh))
      losses.append(float(terms['loss']))
    runs.append((losses, jax.device_get(state['params'])))
  assert on_ynn[0] == 0 < on_ynn[1]  # the two runs did compile differently
  (loss_eigen, params_eigen), (loss_ynn, params_ynn) = runs
  np.testing.assert_allclose(loss_eigen, loss_ynn, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(params_eigen), jax.tree.leaves(params_ynn)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_no_unlabelled_switches_off_what_the_recipe_learns_from_unlabelled_data():
  """real.py:cpu keeps the Inf-Net pseudo masks, so the ablation has a
  `no_unlabelled` arm, and its config has none of them left (normal slices
  as lesion-free stay: they are labelled)."""
  ablation = loader.load_module(f'{REPO}/configs/ablation.py')
  real = loader.load_module(f'{REPO}/configs/real.py')
  recipe = real.get_config('cpu')
  assert ingredients.uses_unlabelled(recipe)
  assert (recipe.loss.pseudo_weight, recipe.loss.normal_no_lesion_weight) == (0.5, 1.0)
  arm = ablation.arms()[-1]
  assert arm == ('no_unlabelled', 'cpu,no_unlabelled', ingredients.UNLABELLED_OFF)
  # A plan that switches the ingredient off for every arm has no such arm.
  assert 'no_unlabelled' not in [a[0] for a in ablation.arms((('loss.pseudo_weight', 0.0),))]
  ablated = real.get_config('cpu,no_unlabelled')
  assert ablated.preset == 'real:cpu,no_unlabelled'
  assert not ingredients.uses_unlabelled(ablated) and ablated.loss.normal_no_lesion_weight == 1.0
  more = real.get_config('cpu')
  more.data.pseudo_labels, more.init_from = 'round1', 'runs/pretrain'
  ingredients.drop_unlabelled(more)
  ablated.preset = more.preset
  assert ablated.to_dict() == more.to_dict()


def test_the_pretrain_preset_is_the_stage_the_recipe_derives():
  """`real.py:cpu,pretrain` trained standalone is the stage that
  `train.pretrain_steps` would train first (so either can stand for the
  other): none of the three-task stage's ingredients."""
  real = loader.load_module(f'{REPO}/configs/real.py')
  from mtl_jax.config import stages
  recipe = real.get_config('cpu')
  recipe.train.pretrain_steps = 1000
  derived = stages.pretrain_config(recipe).to_dict()
  standalone = real.get_config('cpu,pretrain').to_dict()
  assert loader.differences(standalone, derived, ('preset',)) == []
