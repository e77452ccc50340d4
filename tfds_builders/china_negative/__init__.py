"""china_negative: normal slices with the outside of the lungs blanked."""

from .china_negative import ChinaNegative as Builder  # noqa: F401
