"""TFDS builder for your own chest CT: one volume per patient plus a labels.csv.

Layout (pass it as manual_dir; there is no default folder):

    my_ct/
      labels.csv          patient_id,label
      images/
        P001.nii.gz       a NIfTI volume in HU, or
        P002/             a DICOM series folder (one CT slice per file)
          IM0001.dcm ...
      masks/              optional: lesion masks for some patients
        P001.nii.gz       0 background, 1 GGO, 2 consolidation; the same
                          shape and affine as images/P001.nii.gz

labels.csv, worked example:

    patient_id,label
    P001,covid19
    P002,normal
    P003,other
    P004,non_covid
    P005,

label is covid19, normal, other (other lung disease), non_covid (normal or
other, not known which: stored as that label set) or empty (unlabelled: the
slices still train reconstruction, and segmentation where masks exist).
Build it with

    mtl-jax build-data ct_folder --data_dir data --manual_dir my_ct

Every axial slice is written (every_nth_slice=N keeps every N-th;
lung_slices_only=True keeps slices with >= 5% lung-density pixels), in
radiological orientation after reorienting to RAS, lung window -1000..400 HU.
Split by patient: a seeded permutation sends 10% to validation, 10% to test.
A CSV row with an unknown label, a patient without an image, an image or mask
without a CSV row, a mask whose geometry differs from its volume: all are bad
files, listed together in one error.
"""

from mtl_jax.data import features, readers, tables
from .. import common

LABELS = {'covid19': common.COVID, 'normal': common.NORMAL, 'other': common.OTHER,
          'non_covid': features.NON_COVID, '': None}


class CtFolder(common.SliceFolderBuilder):
  """A folder of per-patient chest CT volumes with a labels.csv."""
  # For the model card (mtl_jax/model_card.py) and docs/data.md.
  SOURCE = 'your own CT volumes (labels.csv)'
  LICENCE = 'yours'

  name = 'ct_folder'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
    MANUAL_DIR/labels.csv                 patient_id,label (covid19|normal|other|non_covid|empty)
    MANUAL_DIR/images/<patient_id>.nii.gz or images/<patient_id>/*.dcm
    MANUAL_DIR/masks/<patient_id>.nii.gz  (optional; same geometry as the volume)
  """
  SPLIT_FRACTIONS = {'validation': 0.1, 'test': 0.1}
  SPLIT_RULE = ('by patient: seeded permutation of patient ids, 10% validation, '
                '10% test, the rest train')

  def _find_units(self, root, bad):
    if not (root / 'labels.csv').is_file() or not (root / 'images').is_dir():
      raise readers.BadInputError('need labels.csv and images/')
    rows = tables.read_csv(root / 'labels.csv')
    if rows and not {'patient_id', 'label'} <= set(rows[0]):
      raise readers.BadInputError(f'labels.csv header is {",".join(rows[0])}; '
                                  'expected patient_id,label')
    images = {}
    for f in sorted((root / 'images').iterdir()):
      pid = readers.strip_suffix(f.name)
      if f.name.startswith('.'):
        continue
      if not (f.is_dir() or readers.is_nifti(f)):
        bad.add(f, 'unexpected file (expected <patient_id>.nii.gz or a DICOM folder)')
      elif pid in images:
        bad.add(f, f'a second image for {pid} (also {images[pid].name})')
      else:
        images[pid] = f
    masks = {}
    if (root / 'masks').is_dir():
      masks = {readers.strip_suffix(f.name): f for f in
               readers.list_files(root / 'masks', readers.NIFTI_SUFFIXES, bad)}
    units, seen = [], set()
    for line, row in enumerate(rows, start=2):
      pid, label = (row['patient_id'] or '').strip(), (row['label'] or '').strip().lower()
      where = f'labels.csv line {line} ({pid or "no patient_id"})'
      if not pid or pid in seen:
        bad.add(where, 'empty patient_id' if not pid else 'duplicate patient_id')
        continue
      seen.add(pid)
      if label not in LABELS:
        bad.add(where, f'unknown label {row["label"]!r} (expected covid19, normal, '
                'other, non_covid or empty)')
      elif pid not in images:
        bad.add(where, f'no images/{pid}.nii.gz or images/{pid}/ DICOM folder')
      else:
        value = LABELS[label]
        units.append(common.Unit(
            key=images[pid].name, patient_id=pid, image=images[pid],
            mask=masks.get(pid), label=value if isinstance(value, int) else None,
            label_set=value if isinstance(value, tuple) else None))
    for pid in sorted(set(images) - seen):
      bad.add(images[pid], 'not in labels.csv')
    for pid in sorted(set(masks) - set(images)):
      bad.add(masks[pid], 'mask without an image')
    return units
