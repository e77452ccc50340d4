"""The words of a report: the one-line summary, overview.png's header, the
involvement figure and batch_summary.json.

Rules that keep a line from misleading (issue 40):
  * an out-of-distribution study's line starts with OUT OF DISTRIBUTION and
    says its figures are not reliable;
  * a class under the confidence threshold reads "inconclusive", with the
    probabilities beside it;
  * the lesion figure is the in-lung volume; lesion predicted outside the
    lungs is named apart ("+x mL outside the lungs, not counted");
  * involvement is printed with enough digits that a non-zero value never
    reads 0%, and that the printed figure falls in the grade beside it.
"""

from __future__ import annotations

import math
import os

from mtl_jax import jsonio
from mtl_jax.severity import severity_grade as _grade


def format_percent(value: float) -> str:
  """'12.3%', '0.013%', '24.96%': two significant digits under 1%, one
  decimal above, more wherever fewer would read 0 or cross a grade bound."""
  if value <= 0:
    return '0%'
  digits = 1 if value >= 1 else max(1, 1 - math.floor(math.log10(value)))
  for d in range(digits, 10):
    text = f'{value:.{d}f}'
    if float(text) > 0 and _grade(float(text)) == _grade(value):
      return text + '%'
  return f'{value:.3g}%'


def _class_text(c: dict) -> str:
  probs = c['probabilities']
  if c.get('inconclusive'):
    listed = ' / '.join(f'{k} {v:.2f}' for k, v in probs.items())
    return f'class inconclusive ({listed}; top under {c["confidence_threshold"]["value"]:.2f})'
  return f'{c["predicted_class"]} p={probs[c["predicted_class"]]:.2f}'


def _lesion_text(les: dict) -> str | None:
  if not les or les.get('volume_ml') is None:
    return None
  inside, outside = les.get('in_lung_ml'), les.get('outside_lung_ml')
  if inside is None or outside is None:  # no lung mask (8-bit input)
    return f'lesion {les["volume_ml"]:.1f} mL (no lung mask)'
  text = f'lesion in lung {inside:.1f} mL'
  if outside > 0:
    text += f' (+{outside:.1f} mL outside the lungs, not counted)'
  return text


def summary_line(name: str, rep: dict) -> str:
  """One line per study for the terminal (and batch_summary.json)."""
  c, sev, ood = rep['classification'], rep['severity'], rep['ood']
  parts = [name]
  if rep.get('status') == 'out_of_distribution':
    parts.append('OUT OF DISTRIBUTION: the figures below are not reliable')
  if c:
    parts.append(_class_text(c))
  lesion = _lesion_text(rep['lesion'])
  if lesion:
    parts.append(lesion)
  if sev['involvement_percent'] is not None:
    parts.append(f'involvement {format_percent(sev["involvement_percent"])} {sev["grade"]}')
  if ood and ood.get('value') is not None and ood.get('threshold') is not None:
    what = 'OOD distance' if ood['rule'] == 'encoder features' else 'OOD percentile'
    parts.append(f'{what} {ood["value"]:.2f} of {ood["threshold"]:.2f}' +
                 (' FLAGGED' if ood['flagged'] else ''))
  return ', '.join(parts)


def overview_header(rep: dict) -> str:
  """overview.png's one-line header."""
  c = rep['classification']
  head = _class_text(c) if c else 'no classifier'
  inv = rep['severity']['involvement_percent']
  head += (f' | involvement {format_percent(inv)} ({rep["severity"]["grade"]})'
           if inv is not None else ' | involvement n/a')
  if rep.get('status') == 'out_of_distribution':
    head = 'OUT OF DISTRIBUTION, NOT RELIABLE | ' + head
  return head + ' | research use only'


def write_batch_summary(path, input_path, items, reports, failed=(), schema_version=''):
  """batch_summary.json: one entry per study written, and per study that
  failed (`failed`: (item, one-line error)) with --skip_bad."""
  jsonio.write_json(path, {
      'schema_version': schema_version, 'input': os.path.abspath(str(input_path)),
      'studies': [{'name': it.name, 'input': str(it.input),
                   'mask': None if it.mask is None else str(it.mask),
                   'status': r.get('status'),
                   'summary': summary_line(it.name, r),
                   'predicted_class': (r['classification'] or {}).get('predicted_class'),
                   'result': (r['classification'] or {}).get('result'),
                   'severity': r['severity']['grade'],
                   'ood_flagged': (r['ood'] or {}).get('flagged')}
                  for it, r in zip(items, reports)],
      'failed': [{'name': it.name, 'input': str(it.input), 'error': error}
                 for it, error in failed]})
