"""medseg_covid: MedSeg / SIRM COVID-19 CT segmentation (GGO, consolidation)."""

from .medseg_covid import MedsegCovid as Builder  # noqa: F401
