"""ct_folder: a hospital's own CT volumes (NIfTI or DICOM) with a labels.csv."""

from tfds_builders.ct_folder.ct_folder import CtFolder as Builder  # noqa: F401
