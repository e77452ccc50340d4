"""Evaluation over a whole split, and `mtl-jax evaluate` on a workdir.

An evaluator gets a runtime (tasks, mesh, config), a jitted predict function
(`Runtime.predict_fn`) and model variables; it never sees a trainer or an
optimizer. The predict function runs on sharded, padded batches;
predictions come back to the host where each task's accumulator pools them
over the split, so pooled metrics (Dice over all pixels) and ranking metrics
(ROC AUC over all examples) are computed exactly once, over every example.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from mtl_jax import jsonio, metrics_summary, model_card, ood, parallel
from mtl_jax import runtime as runtime_lib
from mtl_jax.data import pipeline


def iterate_predictions(runtime, predict, variables, split, source_name, max_examples):
  """(host predictions, host batch) for each sharded, padded batch of a split."""
  config = runtime.config
  parallel.check_batch_size(config.eval.batch_size, 'eval.batch_size',
                            num_devices=runtime.mesh.size)
  shard = pipeline.ProcessShard(jax.process_index(), jax.process_count())
  local_batch = config.eval.batch_size // jax.process_count()
  for local in pipeline.eval_batches(config, split, local_batch, source_name,
                                     shard, max_examples):
    images = parallel.global_batch({'image': local['image']}, runtime.mesh)['image']
    yield parallel.to_host(predict(variables, images)), _host_batch(local, source_name)


def _run(runtime, predict, variables, split, source_name, max_examples, accumulator_sets,
         features: list | None = None):
  """Feed one source's split through the model into every accumulator set
  (and its valid slices' encoder features into `features`, when the predict
  function has extras)."""
  for predictions, host_batch in iterate_predictions(runtime, predict, variables, split,
                                              source_name, max_examples):
    for accumulators in accumulator_sets:
      for name, accumulator in accumulators.items():
        runtime.tasks[name].update(accumulator, predictions, host_batch)
    if features is not None and 'features' in predictions:
      features.append(np.asarray(predictions['features'])[host_batch['valid'] > 0])


def _summarize(runtime, accumulators) -> dict:
  config = runtime.config
  return metrics_summary.combine(
      task.summarize(accumulators[name], bootstrap=config.eval.bootstrap_resamples > 0,
                     num_resamples=max(config.eval.bootstrap_resamples, 1))
      for name, task in runtime.tasks.items())


def scalars(results: dict, prefix: str) -> dict:
  """Numeric metrics, each source's under `prefix/by_source/NAME/`, for a writer."""
  out = {f'{prefix}/{k}': v for k, v in results.items()
         if isinstance(v, (int, float)) and not isinstance(v, bool)}
  for name, per_source in results.get('by_source', {}).items():
    out.update(scalars(per_source, f'{prefix}/by_source/{name}'))
  return out


def evaluate(runtime, predict, variables, split: str,
             max_examples: int | None = None, held_out: dict | None = None) -> dict:
  """Metrics pooled over every eval source, and each source's own under `by_source`.

  Sources without masks add nothing to Dice, sources without labels nothing
  to accuracy, so the pooled figures use exactly the examples that can be scored.
  A `held_out` dict receives, per source, what the out-of-distribution
  reference needs from this pass (per-slice reconstruction error, and encoder
  features when `predict` has extras), so that training does not run the
  validation split through the model again for it.
  """
  config = runtime.config
  max_examples = config.eval.max_examples if max_examples is None else max_examples
  new = lambda: {name: task.accumulator() for name, task in runtime.tasks.items()}
  pooled, by_source = new(), {}
  for source_name in config.data.eval_sources:
    by_source[source_name], features = new(), []
    _run(runtime, predict, variables, split, source_name, max_examples,
         (pooled, by_source[source_name]), features)
    if held_out is not None:
      recon = by_source[source_name].get('recon')
      held_out[source_name] = {
          'split': split, 'max_examples': max_examples,
          'recon_mse': recon.per_example_mse if recon is not None else None,
          'features': np.concatenate(features) if features else None}
      cls = by_source[source_name].get('cls')
      if cls is not None:
        held_out[source_name].update(cls_probs=cls.probs, cls_labels=cls.labels)
  results = _summarize(runtime, pooled)
  if len(by_source) > 1:
    results['by_source'] = {name: _summarize(runtime, accs)
                            for name, accs in by_source.items()}
  results['split'] = split
  return results


def _held_out_prefix(held_out: dict | None, source_name: str, key: str, limit: int):
  """The first `limit` validation values of `key` from an evaluation pass, or
  None when that pass did not see them (another split, or fewer examples)."""
  entry = (held_out or {}).get(source_name)
  if (entry is None or entry['split'] != 'validation' or entry[key] is None
      or 0 <= entry['max_examples'] < limit):
    return None
  return entry[key][:limit]


def reference_recon_errors(runtime, predict, variables, num_examples: int = 256,
                           held_out: dict | None = None) -> dict | None:
  """The distribution of reconstruction error on in-distribution, held-out slices.

  Stored with the checkpoint: `mtl-jax predict` reports a study's error as a
  percentile of it, an out-of-distribution score (the reconstruction head
  only learnt to reproduce images like its training data). Validation slices
  of the eval sources, not training slices: a trained model reconstructs the
  slices it has seen better than any new scan, so a training-slice reference
  flags ordinary new CT as outliers.
  """
  if 'recon' not in runtime.tasks:
    return None
  sources = tuple(runtime.config.data.eval_sources)
  limit = max(1, num_examples // len(sources))
  parts = []
  for source_name in sources:
    known = _held_out_prefix(held_out, source_name, 'recon_mse', limit)
    if known is None:
      accumulators = {'recon': runtime.tasks['recon'].accumulator()}
      _run(runtime, predict, variables, 'validation', source_name, limit, (accumulators,))
      known = accumulators['recon'].per_example_mse
    parts.append(known)
  errors = np.concatenate(parts)
  return {'metric': 'per-slice reconstruction MSE', 'sources': list(sources),
          'split': 'validation', 'num_examples': int(errors.size),
          'percentiles': [float(v) for v in np.percentile(errors, np.arange(101))]}


def _features(runtime, variables, split: str, source_name: str, limit: int) -> np.ndarray:
  """Encoder feature statistics of a split's first `limit` slices (TFDS stores
  a split's examples shuffled)."""
  out = [np.asarray(predictions['features'])[host_batch['valid'] > 0]
         for predictions, host_batch in iterate_predictions(
             runtime, runtime.predict_fn(extras=True), variables, split, source_name, limit)]
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def reference_features(runtime, variables, num_fit: int = 256,
                       num_calibration: int = 512, held_out: dict | None = None) -> dict:
  """The out-of-distribution reference stored with a checkpoint (mtl_jax/ood.py):
  fitted on each training source's training slices, its threshold set on
  the eval sources' validation slices (held out from both)."""
  config = runtime.config
  fit = {s: _features(runtime, variables, 'train', s, num_fit) for s in config.data.sources}
  held = {}
  for s in config.data.eval_sources:
    known = _held_out_prefix(held_out, s, 'features', num_calibration)
    held[s] = known if known is not None else _features(runtime, variables, 'validation',
                                                        s, num_calibration)
  reference = ood.calibrate(ood.fit(fit), held)
  return dict(reference, split_fit='train', split_calibration='validation')


def ood_reference_hook(runtime, predict, variables_of):
  """A `Checkpointer` best hook: the out-of-distribution references a kept
  model carries for `mtl-jax predict` (reconstruction errors and encoder
  features), from the state's variables and the validation predictions just
  made (`held_out`)."""
  def hook(state, held_out: dict) -> dict:
    variables = variables_of(state)
    return {'ood_reference': reference_recon_errors(runtime, predict, variables,
                                                    held_out=held_out),
            'ood_features': reference_features(runtime, variables, held_out=held_out)}
  return hook


def confidence_hook(runtime):
  """A `Checkpointer` best hook: the top-class probability below which a
  study is inconclusive (`model_card.calibrate`), from the validation
  slices' class probabilities just computed (`held_out`)."""
  def hook(state, held_out: dict) -> dict:  # pylint: disable=unused-argument
    parts = [e for e in held_out.values()
             if e.get('split') == 'validation' and e.get('cls_probs') is not None]
    if 'cls' not in runtime.tasks or not parts:
      return {}
    return {'class_confidence': model_card.calibrate(
        np.concatenate([e['cls_probs'] for e in parts]),
        np.concatenate([e['cls_labels'] for e in parts]),
        runtime.config.model.num_classes)}
  return hook


def _host_batch(local: dict, source_name: str) -> dict:
  """The batch as every host sees it (gathered across processes if several).

  Strings cannot be all-gathered; every example of this batch comes from
  `source_name`, so the gathered batch gets that name back.
  """
  if jax.process_count() == 1:
    return local
  numeric = {k: v for k, v in local.items() if np.asarray(v).dtype.kind in 'biuf'}
  gathered = parallel.to_host(numeric)
  gathered['source'] = np.full(len(gathered['valid']), source_name)
  return gathered


def results_path(workdir: str, split: str = 'validation', which: str = 'best',
                 tta: bool = False) -> str:
  """Where `mtl-jax evaluate` writes a workdir's results: eval_<split>.json
  for the best checkpoint, eval_<split>_latest.json for the latest, with
  `_tta` for flip test-time augmentation."""
  suffix = ('_latest' if which == 'latest' else '') + ('_tta' if tta else '')
  return os.path.join(workdir, f'eval_{split}{suffix}.json')


def evaluate_workdir(workdir: str, split: str = 'validation', which: str = 'best',
                     overrides: list[str] | None = None, tta: bool = False) -> dict:
  """Restore a workdir's best (or latest) checkpoint, evaluate `split` (with
  left-right flip TTA if asked, as `mtl-jax predict --tta`), write
  `results_path`."""
  loaded = runtime_lib.load(workdir, which, overrides or [])
  results = evaluate(loaded.runtime, loaded.runtime.predict_fn(tta=tta), loaded.variables,
                     split)
  results['checkpoint'] = os.path.abspath(loaded.path)
  results['step'] = loaded.step
  results['tta'] = tta
  if jax.process_index() == 0:
    out = results_path(workdir, split, loaded.which, tta)
    jsonio.write_json(out, results, sort_keys=True)
    logging.info('wrote %s', out)
  return results
