"""sars_cov2_ct: SARS-CoV-2 CT-scan dataset (Soares et al. 2020), COVID vs other pathology."""

from .sars_cov2_ct import SarsCov2Ct as Builder  # noqa: F401
