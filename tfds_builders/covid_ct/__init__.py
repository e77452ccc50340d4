"""covid_ct: UCSD COVID-CT (Zhao et al. 2020), COVID vs non-COVID slices from papers."""

from .covid_ct import CovidCt as Builder  # noqa: F401
