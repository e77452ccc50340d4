"""TFDS builder for the normal ("negative") slices of a compiled COVID-CT collection.

normal/nor_<patient>_img_<k>.jpg -> normal (1). Everything outside the lungs
is blanked in these slices: a classifier can spot the source by that look.
Split by patient id from the file name: 20% of patients to validation.
"""

import dataclasses
import re

from mtl_jax.data.readers import BadInputError
from .. import common

_NAME = re.compile(r'nor_(\w+?)_img_\d+\.(jpg|jpeg|png)$', re.IGNORECASE)


def _patient(path) -> str:
  match = _NAME.match(path.name)
  if not match:
    raise BadInputError('file name is not nor_<patient>_img_<k>.jpg', path)
  return match.group(1)


class ChinaNegative(common.SliceFolderBuilder):
  """Normal chest CT slices (lungs only), with patient ids."""
  # For the model card (mtl_jax/model_card.py) and docs/data.md.
  SOURCE = (
      'normal slices with everything outside the lungs blanked, from a compiled '
      'COVID-CT collection')
  LICENCE = "the compiled collection's terms; not stated by its source"

  name = 'china_negative'
  DEFAULT_FOLDER = 'china_negative'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
    MANUAL_DIR/normal/nor_<patient>_img_<k>.jpg   normal slices
  """
  SPLIT_RULE = ('by patient (nor_<patient>_img_<k>): seeded permutation of '
                'patients, 20% to validation')

  def _find_units(self, root, bad):
    units = common.class_folder_units(root, {'normal': common.NORMAL}, bad,
                                      required=('normal',))
    out = []
    for unit in units:
      patient = bad.run(_patient, unit.image)
      if patient is not None:
        out.append(dataclasses.replace(unit, patient_id=patient))
    return out
