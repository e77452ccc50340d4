"""mosmed: MosMedData (Moscow) chest CT, CT-0 normal vs CT-1..4 COVID-19."""

from .mosmed import Mosmed as Builder  # noqa: F401
