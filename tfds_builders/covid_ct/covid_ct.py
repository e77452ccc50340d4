"""TFDS builder for UCSD COVID-CT: slices cropped from preprints and papers.

CT_COVID -> COVID-19 (0); CT_NonCOVID -> the label set {normal, other}
(`features.NON_COVID`: non-COVID, not known which). The official patient-level
split lists are honoured: train -> 'train', val -> 'validation', test -> 'test'
(only if testCT_*.txt exist). A listed file that is missing, a file in no list
or in two lists is a bad file.

patient_id: COVID from meta/COVID-CT-MetaInfo.xlsx as "<preprint>/<Patient N>"
(the preprint id is the name before "-p"; "Patient N" alone repeats across
papers); NonCOVID from meta/NonCOVID-CT-MetaInfo.csv ("patient id": several
file names can be one patient). Without meta (or for a file it lacks): the
preprint id (COVID) or the name before "%" (NonCOVID), a coarser/finer guess.
"""

import re

from mtl_jax.data import features, readers, tables
from .. import common

_SPLITS = {'train': 'train', 'val': 'validation', 'test': 'test'}
_CLASSES = {'COVID': common.COVID, 'NonCOVID': features.NON_COVID}


def name_patient(name: str, cls: str) -> str:
  """Patient id guessed from a file name (used when meta lacks the file)."""
  if cls == 'COVID' and '-p' in name:
    return name.split('-p')[0]
  return re.split(r'%', readers.strip_suffix(name))[0]


def meta_patients(meta) -> dict:
  """{(class, file name): patient id} from the meta folder, where present."""
  out = {}
  xlsx, csv = meta / 'COVID-CT-MetaInfo.xlsx', meta / 'NonCOVID-CT-MetaInfo.csv'
  if xlsx.exists():
    for row in tables.read_xlsx_columns(xlsx, ('File name', 'Patient ID')):
      if row['File name'] and row['Patient ID']:
        out['COVID', row['File name']] = (f'{name_patient(row["File name"], "COVID")}'
                                          f'/{row["Patient ID"]}')
  if csv.exists():
    for row in tables.read_csv(csv):
      if row.get('image name') and row.get('patient id'):
        out['NonCOVID', row['image name']] = row['patient id']
  return out


class CovidCt(common.SliceFolderBuilder):
  """UCSD COVID-CT: COVID-19 vs non-COVID chest CT slices, official splits."""
  # For the model card (mtl_jax/model_card.py) and docs/data.md.
  SOURCE = 'UCSD COVID-CT (Zhao et al. 2020), slices from papers, official patient split'
  LICENCE = (
      'images under the copyright of the preprints they come from; the UCSD release '
      'permits research use')

  name = 'covid_ct'
  DEFAULT_FOLDER = 'ucsd_covid_ct'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
    MANUAL_DIR/images/CT_COVID/*.png            COVID-19
    MANUAL_DIR/images/CT_NonCOVID/*.{png,jpg}   normal or other disease
    MANUAL_DIR/splits/{train,val,test}CT_{COVID,NonCOVID}.txt   (test optional)
    MANUAL_DIR/meta/COVID-CT-MetaInfo.xlsx, NonCOVID-CT-MetaInfo.csv  (optional)
  """
  SPLIT_RULE = ('official lists: splits/trainCT_* -> train, valCT_* -> '
                'validation, testCT_* -> test')

  def _find_units(self, root, bad):
    for cls in _CLASSES:
      if not (root / 'images' / f'CT_{cls}').is_dir():
        raise readers.BadInputError(f'no images/CT_{cls}/')
      if not (root / 'splits' / f'trainCT_{cls}.txt').exists():
        raise readers.BadInputError(f'no splits/trainCT_{cls}.txt')
    patients = meta_patients(root / 'meta') if (root / 'meta').is_dir() else {}
    units, listed, twice = [], {}, set()
    for prefix, split in _SPLITS.items():
      for cls, label in _CLASSES.items():
        lst = root / 'splits' / f'{prefix}CT_{cls}.txt'
        if not lst.exists():
          continue
        for name in tables.read_list(lst):
          path = root / 'images' / f'CT_{cls}' / name
          if path in listed:
            bad.add(path, f'listed in both {listed[path]} and {lst.name}')
            twice.add(path)
            continue
          listed[path] = lst.name
          if not path.is_file():
            bad.add(path, f'listed in splits/{lst.name} but missing')
            continue
          units.append(common.Unit(
              key=f'CT_{cls}/{name}', image=path, split=split,
              patient_id=patients.get((cls, name), name_patient(name, cls)),
              label=label if isinstance(label, int) else None,
              label_set=None if isinstance(label, int) else label))
    for cls in _CLASSES:
      for f in readers.list_files(root / 'images' / f'CT_{cls}', bad=bad):
        if f not in listed:
          bad.add(f, 'in no split list')
    from_meta = sum((u.key.split('/')[0][3:], u.image.name) in patients for u in units)
    self._notes.append(f'patient ids: {from_meta} of {len(units)} files from meta/, '
                       'the rest guessed from file names')
    return [u for u in units if u.image not in twice]
