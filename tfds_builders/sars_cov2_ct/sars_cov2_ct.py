"""TFDS builder for the SARS-CoV-2 CT-scan dataset (Sao Paulo; 8-bit PNG slices).

covid/ -> COVID-19 (0); non_covid/ -> other pathology (2). The release has no
patient ids, so slices of one patient may land in both splits: validation is
a seeded hash of the file name (20%). Report results on it as optimistic.
"""

from .. import common


class SarsCov2Ct(common.SliceFolderBuilder):
  """SARS-CoV-2 CT-scan dataset: COVID-19 vs other lung disease slices."""
  # For the model card (mtl_jax/model_card.py) and docs/data.md.
  SOURCE = 'SARS-CoV-2 CT-scan dataset (Soares et al. 2020, Sao Paulo)'
  LICENCE = "released for research; the release's terms apply"

  name = 'sars_cov2_ct'
  DEFAULT_FOLDER = 'sars_cov2_ct'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
    MANUAL_DIR/covid/*.png       COVID-19 positive slices
    MANUAL_DIR/non_covid/*.png   other lung diseases
  """
  SPLIT_BY = 'hash'
  SPLIT_RULE = ('no patient ids: 20% validation by seeded sha256 hash of '
                '"<folder>/<file name>" (slices of one patient may be in both)')

  def _find_units(self, root, bad):
    self._notes = ['patient_id is the file path: the source has no patient ids']
    return common.class_folder_units(
        root, {'covid': common.COVID, 'non_covid': common.OTHER}, bad,
        required=('covid', 'non_covid'))
