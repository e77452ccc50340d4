"""covid19_ct_seg: COVID-19-CT-Seg (Ma et al., Zenodo 3757476), 20 COVID-19 volumes."""

from .covid19_ct_seg import Covid19CtSeg as Builder  # noqa: F401
