"""report.json (a versioned schema) and overview.png of `mtl-jax predict`.

report.json, schema_version 1.4 (keys always present; null when not
applicable, e.g. lung figures for an 8-bit input, classification for a
model without a classifier):

  schema_version      "1.4" (1.1: input.axes added; NIfTI spacing_mm in file order;
                      1.2: ood.rule and the encoder-feature score; 1.3:
                      checkpoint.members; 1.4: status, model, classification.
                      {result, inconclusive, confidence_threshold},
                      lesion.{in_lung_ml, outside_lung_fraction}, ood is one
                      rule {rule, value, threshold, flagged} with the other
                      score under ood.reconstruction_error (its percentile
                      etc. no longer at the top); summary involvement digits)
  tool, created       "mtl-jax predict", ISO-8601 UTC time
  input               path, kind (nifti|dicom|image), sha256 (of the file, or
                      of the chosen series' files in name order), series_uid,
                      axes (the axis order of shape, affine and spacing_mm:
                      "file order" for NIfTI, "canonical RAS (X, Y, Z)" for
                      DICOM, "rows, columns" for images), shape, orientation
                      (axis codes), affine, spacing_mm, intensity (hu|8bit),
                      num_slices
  checkpoint          workdir, path (the checkpoint step folder), which, step, tasks
                      (of the first checkpoint), members [{workdir, path, step}]
                      (every checkpoint whose probabilities were averaged; one
                      for a single model)
  preprocessing       image_size, window_hu, model_input_kind (hu|8bit),
                      rendering (how this input became model input), resize,
                      slice_order, tta, batch_size, notes
  status              "ok", or "out_of_distribution" when ood.flagged (the
                      summary line then says the figures are not reliable;
                      --refuse_ood makes it an error instead)
  model               the model card's essentials (mtl_jax/model_card.py):
                      intended_use ("research use only ..."), training_data
                      {sources, eval_sources, data_dir}, recipe {steps,
                      global_batch_size, learning_rate, image_size, model,
                      tasks}, validation {selection {best_metric, value},
                      metrics, eval_validation} or "not recorded", checkpoint
  classification      class_names, probabilities {class: p}, predicted_class
                      (argmax), result (predicted_class, or "inconclusive"
                      when the top probability is under
                      confidence_threshold {value, source (validation |
                      fallback), rule}), inconclusive (bool), aggregation {rule, description, k, fraction,
                      eligible_slices, slices_used}
  slices              per axial slice (canonical RAS index, 0 = most inferior):
                      index, lung (bool), lesion_pixels, probabilities, recon_mse
  lesion              threshold, volume_ml, voxel_volume_ml, by_class_ml,
                      outside_lung_ml (lesion voxels outside the lung mask:
                      never in involvement or the grade), in_lung_ml,
                      outside_lung_fraction (a warning above 0.5),
                      area_pixels (2-D inputs)
  lungs               available, method, volume_ml {right, left, total},
                      involvement_percent {right, left, total}, notes, limitation
  severity            scale, rule, grade (CT-0..CT-4), involvement_percent
  ood                 one rule: rule ('encoder features' when the checkpoint
                      has an `ood_features` reference, mtl_jax/ood.py, else
                      'reconstruction error'), metric, value, threshold,
                      flagged (value > threshold), reference; for encoder
                      features also feature_distance, feature_threshold (=
                      value, threshold; in units of each source's median
                      held-out distance when the reference has
                      source_scales), threshold_rule. reconstruction_error:
                      the reconstruction score in its own field {rule,
                      metric, value (MSE), percentile, threshold_percentile
                      (99), flagged, reference {sources, split,
                      num_examples}, note (whether it decided)}; for the
                      reconstruction rule, ood.value is its percentile
  reference_mask      (batch mode with a mask column) path, dice, volume_ml
  outputs             file names in the output folder
  warnings            list of one-line warnings (also printed on stderr)
"""

from __future__ import annotations

import datetime
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mtl_jax import ood as ood_lib
from mtl_jax.report_text import format_percent, summary_line  # noqa: F401 (re-exported)
from mtl_jax.severity import SEVERITY_RULE, SEVERITY_SCALE, severity_grade  # noqa: F401
from mtl_jax.data.features import COVID, SEG_CLASS_NAMES
from mtl_jax.lesion_threshold import LESION_THRESHOLD

SCHEMA_VERSION = '1.4'
OOD_THRESHOLD_PERCENTILE = ood_lib.THRESHOLD_PERCENTILE  # one false-alarm rate for both rules
PANEL_HEIGHT = 256
MAX_PANELS = 4
COLOURS = {1: (255, 40, 40), 2: (255, 220, 0)}  # GGO / lesion, consolidation
ALPHA = 0.45
OUTSIDE_LUNG_WARNING = 0.5  # warn when more of the predicted lesion lies outside the lungs


def ood_score(value: float, percentiles) -> dict:
  """A study's mean reconstruction MSE as a percentile (0..100) of the reference.

  `percentiles` are the 101 percentiles (0th..100th) of per-slice MSE on
  training slices; linear interpolation between them, clamped to 0 and 100.
  Flagged when the value is above the OOD_THRESHOLD_PERCENTILE-th.
  """
  ref = np.maximum.accumulate(np.asarray(percentiles, np.float64))
  if ref.shape != (101,):
    raise ValueError(f'OOD reference must hold 101 percentiles, got {ref.shape}')
  value = float(value)
  if value <= ref[0]:
    pct = 0.0
  elif value >= ref[-1]:
    pct = 100.0
  else:
    pct = float(np.interp(value, ref, np.arange(101.0)))
  flagged = bool(value > ref[OOD_THRESHOLD_PERCENTILE])
  return {'percentile': pct, 'flagged': flagged,
          'threshold_value': float(ref[OOD_THRESHOLD_PERCENTILE])}


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def _panel(gray: np.ndarray, labels: np.ndarray, caption: str, font) -> Image.Image:
  """A slice (uint8 gray) with its lesion labels blended in colour, and a caption."""
  h, w = gray.shape
  width = max(1, int(round(w * PANEL_HEIGHT / h)))
  rgb = np.repeat(gray[..., None].astype(np.float32), 3, axis=-1)
  for label, colour in COLOURS.items():
    where = labels == label
    rgb[where] = (1 - ALPHA) * rgb[where] + ALPHA * np.asarray(colour, np.float32)
  image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
  image = image.resize((width, PANEL_HEIGHT), Image.Resampling.BILINEAR)
  panel = Image.new('RGB', (width, PANEL_HEIGHT + 14), (0, 0, 0))
  panel.paste(image, (0, 0))
  ImageDraw.Draw(panel).text((2, PANEL_HEIGHT + 1), caption, fill=(220, 220, 220),
                             font=font)
  return panel


def render_overview(path, panels: list, header: str):
  """overview.png: a one-line header above the given (gray, labels, caption) panels."""
  font = ImageFont.load_default()
  tiles = [_panel(g, l, c, font) for g, l, c in panels[:MAX_PANELS]]
  draw_probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  text_width = int(draw_probe.textlength(header, font=font)) + 8
  width = max(sum(t.width for t in tiles) + 4 * max(len(tiles) - 1, 0), text_width, 64)
  height = 18 + (max(t.height for t in tiles) if tiles else 0)
  canvas = Image.new('RGB', (width, height), (0, 0, 0))
  ImageDraw.Draw(canvas).text((4, 3), header, fill=(255, 255, 255), font=font)
  x = 0
  for tile in tiles:
    canvas.paste(tile, (x, 18))
    x += tile.width + 4
  canvas.save(path)
  return os.path.basename(str(path))


def input_info(study) -> dict:
  """The report's `input` section for a `volume_io.Study`.

  shape, affine and spacing_mm are all in one axis order, named by `axes`: a
  NIfTI's own (file) order; a DICOM series' canonical RAS order (its
  lesion_mask is written so); a 2-D image's (rows, columns), with no spacing.
  """
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  affine = study.input_affine if study.input_affine is not None else study.affine
  axes = {'nifti': 'file order', 'dicom': 'canonical RAS (X, Y, Z)',
          'image': 'rows, columns'}[study.kind]
  spacing = (None if affine is None or study.spacing is None else
             [float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)])
  return {'path': os.path.abspath(study.path), 'kind': study.kind,
          'sha256': study.sha256, 'series_uid': study.series_uid,
          'axes': axes, 'shape': list(study.input_shape),
          'orientation': None if affine is None else ''.join(nib.aff2axcodes(affine)),
          'affine': None if affine is None else np.asarray(affine).tolist(),
          'spacing_mm': spacing,
          'intensity': study.intensity, 'num_slices': study.num_slices}


# The study-level class: multiple-instance pooling over slices.
AGG_FRACTION = 0.10
LUNG_SLICE_FRACTION = 0.005  # an eligible slice has this much of its area in the lung mask
AGGREGATION = ('mean of the class-probability vectors of the k eligible slices with '
               f'the highest P(covid19), k = ceil({AGG_FRACTION:.2f} x eligible slices) '
               f'(at least 1); eligible = slices with >= {LUNG_SLICE_FRACTION:.1%} of '
               'their area in the lung mask '
               '(every slice for 8-bit input or when none has lung); predicted '
               'class = argmax')


def aggregate_slices(probs: np.ndarray, eligible: np.ndarray,
                     fraction: float = AGG_FRACTION):
  """(study probabilities, indices used) by the top-k-COVID mean (AGGREGATION).

  COVID-19 lesions occupy a minority of slices, so a plain mean over the
  volume dilutes them, while a single max is noisy; a top-10% mean is a
  standard multiple-instance pooling.
  """
  idx = np.flatnonzero(eligible)
  if idx.size == 0:
    idx = np.arange(len(probs))
  k = max(1, math.ceil(fraction * idx.size))
  top = idx[np.argsort(-probs[idx, COVID], kind='stable')[:k]]
  return probs[top].mean(axis=0), np.sort(top)


def build(study, labels, cls, recon, lung_info: dict, eligible, *, class_names, multi: bool,
          ood_reference, render_warning, checkpoint: dict, preprocessing: dict,
          features=None, ood_features=None, confidence: dict | None = None,
          model: dict | None = None) -> dict:
  """report.json for one study (schema above).

  labels: uint8 lesion labels in the study's canonical order, or None (no
  segmentation task); cls (num_slices, C) and recon (num_slices,) per-slice
  outputs, nan where a task is absent; lung_info, eligible: predict's lung
  analysis (`_pixels_per_slice` and `_outside_ml` are consumed here).
  """
  num, voxel_ml = study.num_slices, study.voxel_ml
  warnings = [f'{study.path}: {render_warning}'] if render_warning else []
  lesion_px = (np.zeros(num, np.int64) if labels is None
               else (labels > 0).sum(axis=(0, 1)))
  lung_info = dict(lung_info)
  lung_px, outside_ml = lung_info.pop('_pixels_per_slice'), lung_info.pop('_outside_ml')
  probs = None
  classification = None
  if not np.isnan(cls).all():
    probs, used = aggregate_slices(cls, eligible)
    classification = {
        'class_names': class_names,
        'probabilities': dict(zip(class_names, map(float, probs))),
        'predicted_class': class_names[int(np.argmax(probs))],
        'confidence_threshold': confidence,
        'inconclusive': bool(confidence is not None
                             and float(np.max(probs)) < confidence['value']),
        'aggregation': {'rule': 'top_k_covid_mean', 'description': AGGREGATION,
                        'fraction': AGG_FRACTION, 'k': int(used.size),
                        'eligible_slices': int(eligible.sum() or num),
                        'slices_used': used.tolist()}}
    classification['result'] = ('inconclusive' if classification['inconclusive']
                                else classification['predicted_class'])
  recon_score = _recon_score(study, recon, eligible, ood_reference)
  ood = _ood_block(study, recon_score, features, eligible, ood_features, warnings)
  lesion = None
  if labels is not None:
    lesion = {'threshold': LESION_THRESHOLD if not multi else 'argmax',
              'voxel_volume_ml': voxel_ml,
              'volume_ml': None if voxel_ml is None else float(lesion_px.sum() * voxel_ml),
              'area_pixels': int(lesion_px.sum()) if study.kind == 'image' else None,
              'by_class_ml': None, 'outside_lung_ml': outside_ml, 'in_lung_ml': None,
              'outside_lung_fraction': None}
    if outside_ml is not None and lesion['volume_ml'] is not None:
      lesion['in_lung_ml'] = max(lesion['volume_ml'] - outside_ml, 0.0)
      if lesion['volume_ml'] > 0:
        lesion['outside_lung_fraction'] = outside_ml / lesion['volume_ml']
        if lesion['outside_lung_fraction'] > OUTSIDE_LUNG_WARNING:
          warnings.append(
              f'{study.path}: {lesion["outside_lung_fraction"]:.0%} of the predicted lesion '
              f'({outside_ml:.1f} of {lesion["volume_ml"]:.1f} mL) lies outside the lungs: '
              'not counted in involvement or the grade; the segmentation may be wrong '
              'or the lung mask may have missed lung')
    if multi and voxel_ml is not None:
      counts = np.bincount(labels.ravel(), minlength=len(SEG_CLASS_NAMES))
      lesion['by_class_ml'] = {n: float(counts[i] * voxel_ml)
                               for i, n in enumerate(SEG_CLASS_NAMES) if i}
  involvement = (lung_info.get('involvement_percent') or {}).get('total')
  slices = [{'index': k, 'lung': bool(lung_px[k] > 0) if lung_px is not None else None,
             'lesion_pixels': int(lesion_px[k]),
             'probabilities': (None if np.isnan(cls[k]).any()
                               else dict(zip(class_names, map(float, cls[k])))),
             'recon_mse': None if np.isnan(recon[k]) else float(recon[k])}
            for k in range(num)]
  return {
      'schema_version': SCHEMA_VERSION, 'tool': 'mtl-jax predict',
      'created': now(),
      'input': input_info(study),
      'checkpoint': checkpoint, 'preprocessing': preprocessing,
      'classification': classification, 'slices': slices, 'lesion': lesion,
      'lungs': lung_info,
      'severity': {'scale': SEVERITY_SCALE, 'rule': SEVERITY_RULE,
                   'grade': severity_grade(involvement),
                   'involvement_percent': involvement},
      'ood': ood, 'status': 'out_of_distribution' if (ood or {}).get('flagged') else 'ok',
      'model': model, 'reference_mask': None, 'warnings': warnings}


def _recon_score(study, recon, eligible, reference) -> dict | None:
  """The reconstruction-error score (`ood.reconstruction_error`), or None."""
  if np.isnan(recon).all():
    return None
  value = float(np.nanmean(recon[eligible] if eligible.any() else recon))
  out = {'rule': 'reconstruction error',
         'metric': 'mean per-slice reconstruction MSE of the eligible slices, '
                   'as a percentile of held-out in-distribution slices',
         'value': value, 'percentile': None,
         'threshold_percentile': OOD_THRESHOLD_PERCENTILE, 'flagged': None,
         'reference': None}
  if reference and reference.get('percentiles'):
    out.update(ood_score(value, reference['percentiles']))
    out['reference'] = {k: reference.get(k) for k in ('sources', 'split', 'num_examples')}
  else:
    out['note'] = 'checkpoint has no OOD reference (ood_reference)'
  return out


def _ood_block(study, recon_score, features, eligible, ood_features, warnings):
  """report.json's `ood`: one rule's figures (value, threshold, flagged) and
  the other score under `reconstruction_error`."""
  if features is not None and ood_features:
    scored = ood_lib.score(features[eligible] if eligible.any() else features, ood_features)
    ood = {'rule': 'encoder features', 'metric': ood_lib.KIND,
           'value': scored['feature_distance'], 'threshold': scored['feature_threshold'],
           'flagged': scored['flagged'], **scored,
           'threshold_rule': ood_features.get('threshold_rule'),
           'reference': {'sources': ood_features.get('sources'),
                         'num_calibration': ood_features.get('num_calibration')}}
    if recon_score is not None:
      ood['reconstruction_error'] = dict(recon_score, note=(
          'shown for comparison; the encoder-feature rule decides `flagged`'))
    if ood['flagged']:
      warnings.append(f'{study.path}: out of distribution: encoder feature distance '
                      f'{ood["value"]:.2f} to the nearest training source is '
                      f'above {ood["threshold"]:.2f} (the '
                      f'{ood_lib.THRESHOLD_PERCENTILE}th percentile of '
                      'held-out training-like slices); the input may not be a chest CT '
                      'like the training data')
    return ood
  if recon_score is None:
    return None
  ood = {'rule': 'reconstruction error', 'metric': recon_score['metric'],
         'value': recon_score['percentile'], 'threshold': float(OOD_THRESHOLD_PERCENTILE),
         'flagged': recon_score['flagged'],
         'reference': recon_score['reference'],
         'reconstruction_error': dict(recon_score, note=(
             'the checkpoint has no encoder-feature reference: this score decides '
             '`flagged` (value: its percentile)'))}
  if ood['flagged']:
    warnings.append(f'{study.path}: out of distribution: reconstruction error '
                    f'at percentile {ood["value"]:.1f} of held-out training-like slices '
                    f'(above the {OOD_THRESHOLD_PERCENTILE}th); the '
                    'input may not be a chest CT like the training data')
  return ood
