"""ct_folder: a hospital's own CT volumes (NIfTI or DICOM) with a labels.csv."""

from .ct_folder import CtFolder as Builder  # noqa: F401
