"""medseg_covid: MedSeg / SIRM COVID-19 CT segmentation (GGO, consolidation)."""

from tfds_builders.medseg_covid.medseg_covid import MedsegCovid as Builder  # noqa: F401
