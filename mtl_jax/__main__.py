"""`python -m mtl_jax` is the `mtl-jax` command."""

import sys

from mtl_jax.cli import main

sys.exit(main())
