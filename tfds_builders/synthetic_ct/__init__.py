"""synthetic_ct: the built-in synthetic chest CT dataset."""

from .synthetic_ct import SyntheticCt as Builder  # noqa: F401

DEFAULT_IMAGE_SIZE = 128
