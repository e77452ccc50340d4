"""synthetic_ct: the built-in synthetic chest CT dataset."""

from tfds_builders.synthetic_ct.synthetic_ct import SyntheticCt  # noqa: F401
