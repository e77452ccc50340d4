"""The severity grade of a study: MosMedData's CT-0..CT-4 from the share of lung involved.

One place for the scale, its rule and the grade, which both the report
(`report.py`) and its text (`report_text.py`: a printed figure must not cross
a grade bound by rounding) use.
"""

from __future__ import annotations

import numpy as np

SEVERITY_SCALE = 'MosMedData CT-0..CT-4 (percentage of lung volume involved)'
SEVERITY_RULE = ('CT-0: 0% (no lesion), CT-1: >0-<25%, CT-2: 25-<50%, '
                 'CT-3: 50-<75%, CT-4: >=75%')


def severity_grade(involvement_percent: float | None) -> str | None:
  """MosMedData category from the % of lung volume involved (None: unknown)."""
  if involvement_percent is None or not np.isfinite(involvement_percent):
    return None
  if involvement_percent <= 0:
    return 'CT-0'
  for grade, upper in (('CT-1', 25), ('CT-2', 50), ('CT-3', 75)):
    if involvement_percent < upper:
      return grade
  return 'CT-4'
