"""`mtl-jax predict`: a trained checkpoint applied to a CT study, for radiologists.

    mtl-jax predict --checkpoint WORKDIR [WORKDIR ...] --input PATH --output OUTDIR
        [--batch_size N] [--tta] [--series UID] [--save_probability]

PATH is a NIfTI volume, a DICOM series (folder or .dcm), a PNG/JPG slice, or
a folder / CSV (`input[,mask]`) of many (batch mode: OUTDIR/<name>/ each, and
OUTDIR/batch_summary.json). See `volume_io` for inputs, `report` for the
report.json schema, `lungs` for the lung mask.

Processing replays the checkpoint's recorded preprocessing: each axial slice
(display orientation, as the dataset builders write slices) is windowed
(`window_hu`) or scaled (8-bit), square-padded, resized bilinearly to
`image_size` and clipped to [0, 1]. A model trained on 8-bit renderings
(`input_kind: 8bit`) given HU input sees the slice rendered through the lung
window and quantised to 8 bits, as its training data was; the report says
so. Slices stream through one jitted apply, in batches sharded over every
device (the last batch padded); with --tta each batch also runs left-right
flipped and seg/class probabilities are averaged. Host memory holds the
volume, the uint8 label (and probability) volumes and one batch of model-size
slices. Probabilities are resized back to each slice's size bilinearly,
then thresholded at 0.5 (binary) or argmax'ed (GGO/consolidation), and
written in the INPUT's geometry.

Eligible slices contain lung (>= 0.5% of the slice inside the HU lung mask);
for 8-bit inputs, or when no slice has lung, every slice is eligible. The
study-level class pools the eligible slices (`report.aggregate_slices`, a
top-10% mean), and the OOD score is their mean reconstruction MSE as a
percentile of the distribution stored in the checkpoint; `report.build`
assembles report.json from these.

Several checkpoints (e.g. the cross-validation folds, as nnU-Net predicts)
make an ensemble: the same input through each, their lesion and class
probabilities averaged before the threshold and the aggregation
(bench/ensemble_folds.py measures what it buys). They must share the
preprocessing record and the architecture; the out-of-distribution score is
the first checkpoint's, whose reference it is measured against.

Every output goes to a temporary folder beside OUTDIR and is renamed into
place at the end: an error leaves OUTDIR exactly as it was.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys

import numpy as np

from mtl_jax import checkpointing, errors, jsonio, lungs, metrics, model_card, parallel
from mtl_jax import replay, report, report_text
from mtl_jax import runtime as runtime_lib
from mtl_jax import tasks as tasks_lib
from mtl_jax import volume_io
from mtl_jax.data.features import CLASS_NAMES, COVID


class NoModelError(errors.CheckpointError):
  """The checkpoint folder holds no usable model."""


class EnsembleMismatchError(errors.CheckpointError):
  """Checkpoints given together that do not see or build the same thing."""


def _as_list(checkpoint) -> list[str]:
  """One workdir or several (an ensemble), as a list."""
  if isinstance(checkpoint, (str, os.PathLike)):
    return [os.fspath(checkpoint)]
  return [os.fspath(c) for c in checkpoint]


def _check_member(first, other, workdir: str):
  """An ensemble member must replay the first one's preprocessing and build
  its architecture: averaging outputs of models that saw different inputs,
  or that predict different things, would be meaningless."""
  for what, a, b in (
      ('preprocessing', first.meta['preprocessing'], other.meta['preprocessing']),
      ('model', first.runtime.config.model.to_dict(), other.runtime.config.model.to_dict()),
      ('tasks', list(first.runtime.tasks), list(other.runtime.tasks))):
    if a != b:
      keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)) if isinstance(
          a, dict) else [f'{a} vs {b}']
      raise EnsembleMismatchError(
          f'{workdir}: its {what} differs from the first checkpoint\'s '
          f'({", ".join(map(str, keys))}); an ensemble needs the same')


def _step_folder_hint(workdir) -> str | None:
  """The one-line answer for a checkpoint step folder given as the run
  folder (runs/x/best/30, runs/x/checkpoints/250), else None."""
  path = pathlib.Path(os.path.normpath(os.path.abspath(workdir)))
  parent = path.parent.name
  if not (path.name.isdigit() and parent in (checkpointing.BEST_DIR,
                                             checkpointing.LATEST_DIR)):
    return None
  kind = 'best' if parent == checkpointing.BEST_DIR else 'latest'
  run_dir = os.path.normpath(os.path.join(os.fspath(workdir), os.pardir, os.pardir))
  return (f'{workdir} is a checkpoint step folder, not a training run: give the run '
          f'folder, --workdir {run_dir} --checkpoint {kind} (predict uses the run\'s '
          f'{kind} checkpoint)')


def load_meta(workdir, which: str = 'best') -> tuple[dict, str]:
  """(checkpoint record, its path) of `which` checkpoint; NoModelError if none."""
  if not os.path.isdir(workdir):
    raise NoModelError(f'{workdir}: checkpoint folder not found')
  try:
    meta, path = checkpointing.read_meta(workdir, which)
  except errors.CheckpointError as e:
    hint = _step_folder_hint(workdir)
    raise NoModelError(hint or str(e)) from None
  if 'config' not in meta or 'preprocessing' not in meta:
    raise NoModelError(f'{path}: checkpoint has no config/preprocessing record '
                       '(written by an older mtl-jax?); retrain or re-save it')
  return meta, path


class Predictor:
  """Restored checkpoint(s) and their jitted, sharded apply; `predict_study` per input.

  `workdir` is one training workdir or a list of them (an ensemble: the
  first one's record drives preprocessing, the report and the OOD score).
  """

  def __init__(self, workdir, batch_size: int | None = None, tta: bool = False,
               which: str = 'best'):
    workdirs = _as_list(workdir)
    for w in workdirs:
      load_meta(w, which)  # a one-line error for a folder without a model
    members = [runtime_lib.load(w, which) for w in workdirs]
    for w, other in zip(workdirs[1:], members[1:]):
      _check_member(members[0], other, w)
    loaded = members[0]
    self.runtime, self.variables, self.meta = loaded.runtime, loaded.variables, loaded.meta
    self.member_variables = [m.variables for m in members[1:]]
    self.members = [{'workdir': os.path.abspath(w), 'path': os.path.abspath(m.path),
                     'step': m.step} for w, m in zip(workdirs, members)]
    self.path, self.which, self.step = loaded.path, loaded.which, loaded.step
    self.workdir, self.tta = os.path.abspath(workdirs[0]), bool(tta)
    config = self.runtime.config
    requested = int(batch_size or config.eval.batch_size)
    if requested < 1:
      raise errors.UserError(f'--batch_size must be positive, got {requested}')
    n = self.runtime.mesh.size  # pad up to a multiple of the devices
    self.batch_size = -(-requested // n) * n
    self.replay = replay.InputReplay(self.meta['preprocessing'])
    self.image_size, self.window = self.replay.image_size, self.replay.window
    self.class_names = list(CLASS_NAMES[:config.model.num_classes])
    self.tasks = self.runtime.tasks
    self.multi = 'seg' in self.tasks and self.tasks['seg'].multi_class
    self.confidence = model_card.confidence_threshold(self.meta, len(self.class_names))
    self.model_card = model_card.card(self.meta, self.path, self.workdir)
    self._apply = self.runtime.predict_fn(self.tta, extras=True)

  def predict_batch(self, images: np.ndarray) -> dict:
    """(B, S, S) model inputs -> numpy predictions: every task's, with 'seg'
    the probabilities a mask is made from, 'recon_mse' and 'features' (tests
    patch this). An ensemble averages what each task averages (`tasks.average`)."""
    batch = parallel.global_batch({'image': images}, self.runtime.mesh)['image']
    members = [parallel.to_host(self._apply(v, batch))
               for v in [self.variables] + self.member_variables]
    out = members[0] if len(members) == 1 else tasks_lib.average(self.tasks, members)
    out = {k: np.asarray(v) for k, v in out.items()}
    if 'seg' in self.tasks:
      out['seg'] = out[self.tasks['seg'].probability_key]
    return out

  def predict_study(self, study: volume_io.Study, dest, save_probability=False,
                    reference_mask=None, dicom_seg: bool = False) -> dict:
    """Run the model over every slice, write outputs into `dest`, return the report."""
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    render, rendering, render_warning = self.replay.renderer(study.intensity)
    shape, num, size = study.volume.shape, study.num_slices, self.image_size
    has_seg = 'seg' in self.tasks
    labels = np.zeros(shape, np.uint8) if has_seg else None
    prob = np.zeros(shape, np.uint8) if has_seg and save_probability else None
    cls = np.full((num, len(self.class_names)), np.nan, np.float32)
    recon = np.full(num, np.nan, np.float64)
    features = [None] * num
    h, w = shape[1], shape[0]  # display rows (Y), columns (X)
    model_input = lambda k: self.replay.model_input(render(study.slice(k)))
    standardize, how = self.replay.standardizer(study, model_input)
    rendering = f'{rendering}; {how}'
    for start in _progress(range(0, num, self.batch_size), desc=os.path.basename(str(study.path)),
                           unit='batch'):
      ks = range(start, min(start + self.batch_size, num))
      images = np.zeros((self.batch_size, size, size), np.float32)  # padded
      boxes = []
      for i, k in enumerate(ks):
        image, box = model_input(k)
        images[i] = standardize(image)
        boxes.append(box)
      out = self.predict_batch(images)
      for i, k in enumerate(ks):
        if 'cls_probs' in out:
          cls[k] = out['cls_probs'][i]
        if 'recon_mse' in out:
          recon[k] = out['recon_mse'][i]
        if 'features' in out:
          features[k] = out['features'][i]
        if has_seg:
          seg = np.asarray(out['seg'][i], np.float32)
          p, lab = self.replay.back(seg, boxes[i], h, w)
          study.put_slice(labels, k, lab)
          if prob is not None:
            study.put_slice(prob, k, np.round(p * 255).astype(np.uint8))
    rep = self._report(study, labels, cls, recon, rendering, render_warning,
                       None if features[0] is None else np.stack(features))
    outputs = {}
    if has_seg:
      outputs['lesion_mask'] = volume_io.write_like_input(
          study, labels, dest / 'lesion_mask', labels=True)
      if prob is not None:
        outputs['lesion_probability'] = volume_io.write_like_input(
            study, prob, dest / 'lesion_probability')
      if dicom_seg:  # also the mask as a DICOM-SEG of the source series
        from mtl_jax import dicom_seg as dicom_seg_lib  # pylint: disable=g-import-not-at-top
        outputs['lesion_seg'] = dicom_seg_lib.write(
            study, labels, dest / 'lesion_seg', self.runtime.config.model.num_seg_classes,
            _version())
    if reference_mask is not None and has_seg:
      ref = volume_io.read_mask_like(study, reference_mask)
      rep['reference_mask'] = {
          'path': str(reference_mask),
          'dice': metrics.dice(labels > 0, ref > 0),
          'volume_ml': None if study.voxel_ml is None else float(
              (ref > 0).sum() * study.voxel_ml)}
    outputs['overview'] = self._overview(study, labels, rep, render, dest / 'overview.png')
    outputs['report'] = 'report.json'
    rep['outputs'] = outputs
    jsonio.write_json(dest / 'report.json', rep)
    for warning in rep['warnings']:
      print(f'mtl-jax predict: warning: {warning}', file=sys.stderr)
    return rep

  def _report(self, study, labels, cls, recon, rendering, render_warning,
              features=None) -> dict:
    lung_info, eligible = self._lungs(study, labels)
    return report.build(
        study, labels, cls, recon, lung_info, eligible, class_names=self.class_names,
        multi=self.multi, ood_reference=self.meta.get('ood_reference'),
        features=features, ood_features=self.meta.get('ood_features'),
        render_warning=render_warning, confidence=self.confidence,
        model=self.model_card, checkpoint={'workdir': self.workdir, 'path': os.path.abspath(self.path),
                    'which': self.which, 'step': self.step, 'tasks': list(self.tasks),
                    'members': self.members},
        preprocessing={
            'image_size': self.image_size, 'window_hu': list(self.window),
            'model_input_kind': self.replay.model_kind, 'rendering': rendering,
            'resize': 'square pad (0), bilinear to image_size, clip to [0, 1]; '
                      'back: bilinear on probabilities, crop, threshold',
            'slice_order': 'axial slices of the closest canonical RAS orientation, '
                           'index 0 = most inferior',
            'tta': self.tta, 'batch_size': self.batch_size})

  def _lungs(self, study, labels):
    """(lungs section, eligible-slice mask); HU inputs only."""
    num = study.num_slices
    if study.intensity != 'hu':
      return {'available': False, 'method': None, 'volume_ml': None,
              'involvement_percent': None, 'notes': [],
              'limitation': '8-bit rendering: no Hounsfield units, so no HU lung '
                            'mask; lung volume, involvement and severity are not '
                            'computed', '_pixels_per_slice': None,
              '_outside_ml': None}, np.ones(num, bool)
    spacing = study.spacing if study.spacing is not None else np.ones(3)
    result = lungs.segment_lungs(study.volume, spacing)
    outside = lungs.add_lesions(result, labels) if labels is not None else None
    voxel_ml = study.voxel_ml
    lung_px = (result.labels > 0).sum(axis=(0, 1))
    eligible = lung_px >= (report.LUNG_SLICE_FRACTION
                           * study.volume.shape[0] * study.volume.shape[1])
    volumes = result.volumes_ml(voxel_ml)
    involvement = None
    if labels is not None:
      lesion = labels > 0
      involvement = {}
      for name, sides in (('right', (lungs.RIGHT,)), ('left', (lungs.LEFT,)),
                          ('total', (lungs.RIGHT, lungs.LEFT))):
        in_lung = np.isin(result.labels, sides)
        n = int(in_lung.sum())
        involvement[name] = None if n == 0 else float(100.0 * (lesion & in_lung).sum() / n)
    return {'available': True, 'method': lungs.METHOD, 'volume_ml': volumes,
            'involvement_percent': involvement, 'notes': result.notes,
            'limitation': None, '_pixels_per_slice': lung_px,
            '_outside_ml': None if outside is None else float(outside * voxel_ml)
            }, eligible

  def _overview(self, study, labels, rep, render, path):
    slices = rep['slices']
    order = sorted(range(len(slices)), key=lambda k: (
        -slices[k]['lesion_pixels'],
        -((slices[k]['probabilities'] or {}).get(CLASS_NAMES[COVID], 0.0)
          if self.class_names else 0.0)))
    chosen = sorted(order[:report.MAX_PANELS])
    panels = []
    for k in chosen:
      gray = np.round(np.clip(render(study.slice(k)), 0, 1) * 255).astype(np.uint8)
      lab = (np.zeros_like(gray) if labels is None
             else np.ascontiguousarray(study.slice(k, labels)))
      panels.append((gray, lab, f'slice {k}: {slices[k]["lesion_pixels"]} px'))
    head = report_text.overview_header(rep)
    return report.render_overview(path, panels, head)


def _progress(iterable, **kwargs):
  """A tqdm bar on stderr when it is a terminal; the bare iterable in logs."""
  if not sys.stderr.isatty():
    return iterable
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(iterable, leave=False, file=sys.stderr, **kwargs)


class OutOfDistributionError(errors.UserError):
  """A study flagged out of distribution, with --refuse_ood."""


class Results(list):
  """The reports of the studies written; `failed`: (item, one-line error) of
  those skipped with --skip_bad."""

  def __init__(self, reports=(), failed=()):
    super().__init__(reports)
    self.failed = list(failed)


def _refuse(item, rep):
  ood = rep['ood'] or {}
  raise OutOfDistributionError(
      f'{item.input}: out of distribution ({ood.get("rule")}: {ood.get("value"):.2f} above '
      f'{ood.get("threshold"):.2f}); refused (--refuse_ood), nothing written')


def _version() -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    return metadata.version('mtl-jax')
  except metadata.PackageNotFoundError:
    return 'unknown'


def run(workdirs, input_path, output, *, batch_size=None, tta=False, series=None,
        save_probability=False, which='best', predictor: Predictor | None = None,
        refuse_ood=False, skip_bad=False, output_type: str = 'nifti') -> Results:
  """The CLI entry: check what is cheap first (model folder, inputs, masks; a
  single input is read before the model is built), predict, then publish.

  --refuse_ood: a flagged study is an error (nothing written). --skip_bad
  (batch): a study that fails with a one-line error is listed in
  batch_summary.json's `failed` and the rest are written; `Results.failed`.
  """
  if predictor is None:
    for workdir in _as_list(workdirs):
      load_meta(workdir, which)  # fail fast on a folder without a model
  batch, items = volume_io.discover(input_path)
  volume_io.check_masks(items)
  first = None if batch else volume_io.read_study(items[0].input, series)
  if first is not None and output_type == 'dicom_seg' and first.kind != 'dicom':
    raise errors.UserError(f'{first.path}: --output_type dicom_seg needs DICOM input '
                           f'(this is {first.kind}); the NIfTI mask is written for any input')
  predictor = predictor or Predictor(workdirs, batch_size, tta, which)
  reports, done, failed = [], [], []
  with volume_io.staged_output(output) as tmp:
    for item in _progress(items, desc='studies', unit='study') if batch else items:
      dest = tmp / item.name if batch else tmp
      try:
        study = first if first is not None else volume_io.read_study(item.input, series)
        first = None
        rep = predictor.predict_study(study, dest, save_probability, item.mask,
                                      dicom_seg=output_type == 'dicom_seg')
        del study
        if refuse_ood and rep['status'] == 'out_of_distribution':
          _refuse(item, rep)
      except errors.CheckpointError:
        raise
      except errors.UserError as e:
        if not (batch and skip_bad):
          raise
        shutil.rmtree(dest, ignore_errors=True)
        failed.append((item, ' '.join(str(e).split())))
        print(f'mtl-jax predict: skipped: {failed[-1][1]}', file=sys.stderr)
        continue
      reports.append(rep)
      done.append(item)
      print(report.summary_line(item.name, rep))
    if batch:
      report_text.write_batch_summary(tmp / 'batch_summary.json', input_path, done, reports,
                                      failed, report.SCHEMA_VERSION)
  if failed:
    print(f'mtl-jax predict: {len(failed)} of {len(items)} studies failed (listed in '
          f'{pathlib.Path(output) / "batch_summary.json"}); the rest are written',
          file=sys.stderr)
  return Results(reports, failed)
