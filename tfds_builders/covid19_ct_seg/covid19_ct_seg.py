"""TFDS builder for COVID-19-CT-Seg: 20 COVID-19 CT volumes (all label COVID-19).

(a) NIfTI (Zenodo 3757476): COVID-19-CT-Seg_20cases/<case>.nii.gz with
    Infection_Mask/<case>.nii.gz (label > 0 -> 1; the release does not tell
    GGO from consolidation) and Lung_Mask/ (not used: no lung class in the
    spec). Mask names drop "_org" ("coronacases_org_001" -> "coronacases_001",
    "radiopaedia_org_covid-19-pneumonia-10_85902_1-dcm" -> "radiopaedia_10_85902_1").
    The 10 coronacases are HU (lung window); the 10 Radiopaedia cases are stored
    as 0..255 and are scaled as 8-bit (recorded per volume in the metadata).
(b) Slice folder images/<volume>_<slice>.jpg (+ pseudo_masks/<same>.png): the
    masks are made by a model (Inf-Net), not ground truth, so by default they
    are left out (images serve reconstruction and the COVID label).
    `use_pseudo_masks=True` (`build-data covid19_ct_seg --use_pseudo_masks`)
    stores them as pseudo labels: the soft 0..255 probabilities in the
    `soft_mask` feature, has_mask still False, so no metric counts them; the
    metadata's source becomes "covid19_ct_seg_pseudo". Every image needs its
    mask and every mask its image.
Both: split by volume, a seeded permutation sends 20% (4 of 20) to validation.
"""

import re

from mtl_jax.data import readers
from .. import common

_SLICE_NAME = re.compile(r'(.+)_(\d+)\.(jpg|jpeg|png)$', re.IGNORECASE)


def mask_name(case: str) -> str:
  """Infection_Mask file stem for a COVID-19-CT-Seg_20cases file stem."""
  return (case.replace('_org_covid-19-pneumonia-', '_').replace('_org_', '_')
          .removesuffix('-dcm'))


class Covid19CtSeg(common.SliceFolderBuilder):
  """COVID-19-CT-Seg volumes (or their slices) with infection masks."""
  # For the model card (mtl_jax/model_card.py) and docs/data.md.
  SOURCE = (
      'COVID-19-CT-Seg (Ma et al., Zenodo 3757476) volume slices, Inf-Net model-made '
      'pseudo masks')
  LICENCE = "CC-BY-4.0 (images); the pseudo masks are a model's output, not ground truth"

  name = 'covid19_ct_seg'
  DEFAULT_FOLDER = 'covid19_ct_seg_pseudo'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
    either NIfTI:   MANUAL_DIR/COVID-19-CT-Seg_20cases/<case>.nii.gz
                    MANUAL_DIR/Infection_Mask/<case without _org>.nii.gz
                    MANUAL_DIR/Lung_Mask/...                     (optional, unused)
    or slices:      MANUAL_DIR/images/<volume>_<slice>.jpg
                    MANUAL_DIR/pseudo_masks/<volume>_<slice>.png (model-made; optional)
  """
  MASK_SOFT = True
  VOLUME_MASK_MAP = 'nonzero'
  SPLIT_RULE = 'by volume: seeded permutation of volumes, 20% (4 of 20) to validation'

  def __init__(self, *, use_pseudo_masks: bool = False, **kwargs):
    self._use_pseudo = bool(use_pseudo_masks)
    super().__init__(**kwargs)

  def _options(self):
    return {'use_pseudo_masks': self._use_pseudo}

  def _source_name(self):
    return self.name + ('_pseudo' if self._use_pseudo and self._slices else '')

  def _find_units(self, root, bad):
    self._slices = not (root / 'COVID-19-CT-Seg_20cases').is_dir()
    return self._slice_units(root, bad) if self._slices else self._volumes(root, bad)

  def _volumes(self, root, bad):
    if self._use_pseudo:
      self._notes.append('use_pseudo_masks ignored: the NIfTI layout has real masks')
    masks_dir = root / 'Infection_Mask'
    if not masks_dir.is_dir():
      raise readers.BadInputError('no Infection_Mask/ beside COVID-19-CT-Seg_20cases/')
    masks = {readers.strip_suffix(f.name): f
             for f in readers.list_files(masks_dir, readers.NIFTI_SUFFIXES, bad)}
    units = []
    for f in readers.list_files(root / 'COVID-19-CT-Seg_20cases',
                                readers.NIFTI_SUFFIXES, bad):
      case = readers.strip_suffix(f.name)
      mask = masks.pop(mask_name(case), None) or masks.pop(case, None)
      if mask is None:
        bad.add(f, f'no Infection_Mask/{mask_name(case)}.nii.gz')
        continue
      units.append(common.Unit(key=f.name, patient_id=case, image=f, mask=mask,
                               label=common.COVID))
    for name, f in sorted(masks.items()):
      bad.add(f, 'infection mask without a volume')
    return units

  def _slice_units(self, root, bad):
    if not (root / 'images').is_dir():
      raise readers.BadInputError('no COVID-19-CT-Seg_20cases/ and no images/')
    masks = root / 'pseudo_masks'
    if self._use_pseudo and not masks.is_dir():
      raise readers.BadInputError('use_pseudo_masks=True but no pseudo_masks/')
    self._notes.append('pseudo masks are model-made (Inf-Net), not ground truth'
                       if self._use_pseudo else
                       'pseudo_masks/ not used (model-made): has_mask is False')
    units = []
    for f in readers.list_files(root / 'images', bad=bad):
      match = _SLICE_NAME.match(f.name)
      if not match:
        bad.add(f, 'file name is not <volume>_<slice index>.jpg')
        continue
      mask = None
      if self._use_pseudo:
        mask = masks / (f.stem + '.png')
        if not mask.exists():
          bad.add(f, f'no pseudo mask {mask.name}')
          continue
      units.append(common.Unit(key=f'images/{f.name}', patient_id=match.group(1),
                               image=f, mask=mask, label=common.COVID))
    if self._use_pseudo:
      readers.masks_without_images(masks, root / 'images', bad)
    return units
