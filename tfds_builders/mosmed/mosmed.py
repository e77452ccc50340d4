"""TFDS builder for MosMedData, as 8-bit slices or as the NIfTI studies.

(a) slices: ct0_normal/ -> normal (1); ct1_covid/ .. ct4_covid/ -> COVID-19 (0).
    No patient ids: 20% validation by a seeded hash of "<folder>/<file>", so
    slices of one patient can be in both splits (the data README says so).
(b) studies: studies/CT-<k>/study_XXXX.nii.gz in HU (lung window), with the
    optional masks/study_XXXX_mask.nii.gz (lesion > 0 -> 1); split by study.
"""

import re

from mtl_jax.data import readers
from .. import common

_SLICE_FOLDERS = {'ct0_normal': common.NORMAL, 'ct1_covid': common.COVID,
                  'ct2_covid': common.COVID, 'ct3_covid': common.COVID,
                  'ct4_covid': common.COVID}
_STUDY_FOLDER = re.compile(r'CT-([0-4])$')


class Mosmed(common.SliceFolderBuilder):
  """MosMedData: normal (CT-0) vs COVID-19 (CT-1..CT-4) chest CT."""
  # For the model card (mtl_jax/model_card.py) and docs/data.md.
  SOURCE = 'MosMedData (Moscow) CT-0 normal, CT-1/CT-2 COVID-19 slices'
  LICENCE = "released for research; the release's terms apply"

  name = 'mosmed'
  DEFAULT_FOLDER = 'mosmed_slices'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
    either slices:  MANUAL_DIR/ct0_normal/*.jpg, ct1_covid/*.jpg, ct2_covid/*.jpg
                    (ct3_covid/, ct4_covid/ optional)
    or studies:     MANUAL_DIR/studies/CT-{0..4}/study_XXXX.nii.gz   (HU)
                    MANUAL_DIR/masks/study_XXXX_mask.nii.gz          (optional)
  """
  VOLUME_MASK_MAP = 'nonzero'

  def _find_units(self, root, bad):
    if (root / 'studies').is_dir():
      return self._studies(root, bad)
    self.SPLIT_BY = 'hash'
    self._split_rule = ('no patient ids: 20% validation by seeded sha256 hash of '
                        '"<folder>/<file name>" (slices of one patient may be in both)')
    self._notes = ['patient_id is the file path: the slices carry no patient ids']
    present = [f for f in _SLICE_FOLDERS if (root / f).is_dir()]
    if not present:
      raise readers.BadInputError('no ct0_normal/ ct1_covid/ ... folders and no studies/')
    return common.class_folder_units(root, _SLICE_FOLDERS, bad,
                                     required=('ct0_normal',))

  def _studies(self, root, bad):
    self._split_rule = 'by study: seeded permutation of study ids, 20% to validation'
    masks = {}
    if (root / 'masks').is_dir():
      for f in readers.list_files(root / 'masks', readers.NIFTI_SUFFIXES, bad):
        masks[readers.strip_suffix(f.name).removesuffix('_mask')] = f
    units = []
    for folder in sorted((root / 'studies').iterdir()):
      match = _STUDY_FOLDER.match(folder.name)
      if not match or not folder.is_dir():
        bad.add(folder, 'unexpected entry (expected folders CT-0 .. CT-4)')
        continue
      label = common.NORMAL if match.group(1) == '0' else common.COVID
      for f in readers.list_files(folder, readers.NIFTI_SUFFIXES, bad):
        study = readers.strip_suffix(f.name)
        units.append(common.Unit(key=f'{folder.name}/{f.name}', patient_id=study,
                                 image=f, mask=masks.pop(study, None), label=label))
    for study, f in sorted(masks.items()):
      bad.add(f, f'mask without a study {study}.nii.gz')
    return units
