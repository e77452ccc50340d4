"""Run configs: the schema every config builds on, and how configs are read.

`schema` holds every field with its default and the named presets;
`ingredients` the one table of the recipe's optional ingredients and what
switches each off; `stages` derives a run's pre-training stage; `loader`
reads `path/to/config.py[:ARG]`, applies `--config.KEY=VALUE` and reads the
config a checkpoint saved. Config files (`configs/*.py`) import these and
nothing else of the library; the library never imports a config file.
"""
