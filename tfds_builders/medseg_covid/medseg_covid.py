"""TFDS builder for the MedSeg "COVID-19 CT segmentation dataset" (all COVID-19).

(a) Slice folders (Inf-Net's COVID-SemiSeg training set): images/*.jpg with
    masks_multiclass/*.png (palette: 0 bg, 1 GGO, 2 consolidation), or, when
    that folder is absent, masks/*.png (binary lesion {0,255} -> 1).
(b) The original NIfTI release: tr_im.nii.gz + tr_mask.nii.gz (100 axial
    slices of ~40 patients, HU) and/or rp_im/N.nii.gz + rp_msk/N.nii.gz
    (Radiopaedia volumes). Mask label 3 (pleural effusion) becomes 0: effusion
    is not a COVID lesion class in our spec. If present, (b) is used, not (a).
No patient ids for the slices (a) and tr_im (b): each slice is its own group
and a seeded permutation sends 20% of them (10 of the 50 in (a), 20 of the
100 tr_im slices) to validation; Radiopaedia volumes are split by volume.
"""

from mtl_jax.data import readers
from .. import common

_EFFUSION_TO_BG = {0: 0, 1: 1, 2: 2, 3: 0}


class MedsegCovid(common.SliceFolderBuilder):
  """MedSeg COVID-19 CT slices with GGO/consolidation masks."""
  # For the model card (mtl_jax/model_card.py) and docs/data.md.
  SOURCE = (
      "MedSeg / SIRM COVID-19 CT segmentation slices, radiologists' masks "
      "(medicalsegmentation.com), as in Inf-Net's COVID-SemiSeg training set")
  LICENCE = 'terms of medicalsegmentation.com (SIRM cases); Inf-Net code MIT'

  name = 'medseg_covid'
  DEFAULT_FOLDER = 'medseg_covid'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
    either slices:  MANUAL_DIR/[train/]images/<name>.jpg
                    MANUAL_DIR/[train/]masks_multiclass/<name>.png  (palette 0/1/2)
                    or MANUAL_DIR/[train/]masks/<name>.png          (binary 0/255)
    or NIfTI:       MANUAL_DIR/tr_im.nii.gz + tr_mask.nii.gz        (labels 1 GGO,
                    2 consolidation, 3 effusion -> 0) and/or
                    MANUAL_DIR/rp_im/<N>.nii.gz + rp_msk/<N>.nii.gz
  """
  VOLUME_MASK_MAP = _EFFUSION_TO_BG

  def _find_units(self, root, bad):
    if (root / 'tr_im.nii.gz').exists() or (root / 'rp_im').is_dir():
      return self._nifti(root, bad)
    folder = root / 'train' if (root / 'train' / 'images').is_dir() else root
    if not (folder / 'images').is_dir():
      raise readers.BadInputError('no images/ folder and no tr_im.nii.gz / rp_im/')
    masks = folder / 'masks_multiclass'
    if not masks.is_dir():
      masks = folder / 'masks'
      self._notes.append('binary masks: every lesion pixel is stored as 1 (GGO)')
    if not masks.is_dir():
      raise readers.BadInputError('no masks_multiclass/ or masks/ beside images/')
    self._split_rule = ('no patient ids: seeded permutation of file names, 20% '
                        '(10 of 50) to validation')
    self._notes.append(f'masks from {masks.name}/')
    units = []
    for f in readers.list_files(folder / 'images', bad=bad):
      mask = [m for m in (masks / (f.stem + '.png'), masks / f.name) if m.exists()]
      if not mask:
        bad.add(f, f'no mask {f.stem}.png in {masks.name}/')
        continue
      units.append(common.Unit(key=f'images/{f.name}', patient_id=f'slice_{f.stem}',
                               image=f, mask=mask[0], label=common.COVID))
    readers.masks_without_images(masks, folder / 'images', bad)
    return units

  def _nifti(self, root, bad):
    self._split_rule = ('tr_im slices (no patient ids): seeded permutation, 20% to '
                        'validation; rp_im volumes: seeded permutation by volume, 20%')
    self._notes.append('mask label 3 (pleural effusion) mapped to 0 (background)')
    units = []
    if (root / 'tr_im.nii.gz').exists():
      image, mask = root / 'tr_im.nii.gz', root / 'tr_mask.nii.gz'
      if not mask.exists():
        bad.add(mask, 'missing (the mask of tr_im.nii.gz)')
      loaded = bad.run(self._load, common.Unit('tr_im', 'tr_im', image, mask))
      for k in range(len(loaded.images) if loaded else 0):
        units.append(common.Unit(key=f'tr_im.nii.gz#{k:03d}', patient_id=f'tr_im_{k:03d}',
                                 image=image, mask=mask, label=common.COVID,
                                 slice_index=k))
    if (root / 'rp_im').is_dir():
      for f in readers.list_files(root / 'rp_im', readers.NIFTI_SUFFIXES, bad):
        mask = root / 'rp_msk' / f.name
        if not mask.exists():
          bad.add(f, f'no mask rp_msk/{f.name}')
          continue
        units.append(common.Unit(key=f'rp_im/{f.name}',
                                 patient_id=f'rp_{readers.strip_suffix(f.name)}',
                                 image=f, mask=mask, label=common.COVID))
    return units

  def _assign_splits(self, units):
    """tr_im slices and rp volumes are permuted separately (each 20%)."""
    out = {}
    for prefix in ('tr_im', 'rp_', 'slice_'):
      group = [u for u in units if u.patient_id.startswith(prefix)]
      split = common.split_by_permutation([u.patient_id for u in group],
                                          self.SPLIT_FRACTIONS, self._seed, self._fold)
      out.update({u.key: split[u.patient_id] for u in group})
    return out
