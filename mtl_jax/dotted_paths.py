"""Paths into nested dicts: one reader and writer for every such path.

Two kinds of path, each with its own separator, so that neither is ever
rewritten into the other: config fields are dotted (`train.best_metric`, as
`--config.KEY` and ml_collections spell them) and metric names are slashed
(`by_source/covid_ct/auc_covid`, as TensorBoard and eval_<split>.json spell
them). Flattening is `flax.traverse_util`'s.
"""

from __future__ import annotations

from flax import traverse_util

CONFIG_SEP = '.'
METRIC_SEP = '/'

_MISSING = object()


def get(tree, path: str, default=None, sep: str = CONFIG_SEP):
  """tree['a']['b'] for 'a.b'; `default` where a part is missing or a node on
  the way is not a mapping (a dict or a ConfigDict)."""
  node = tree
  for part in path.split(sep):
    if not hasattr(node, 'keys') or part not in node:
      return default
    node = node[part]
  return node


def has(tree, path: str, sep: str = CONFIG_SEP) -> bool:
  return get(tree, path, _MISSING, sep) is not _MISSING


def put(tree: dict, path: str, value, sep: str = CONFIG_SEP) -> None:
  """Set tree['a']['b'] for 'a.b', making the dicts on the way."""
  *parents, leaf = path.split(sep)
  node = tree
  for part in parents:
    node = node.setdefault(part, {})
  node[leaf] = value


def pop(tree: dict, path: str, sep: str = CONFIG_SEP):
  *parents, leaf = path.split(sep)
  node = tree
  for part in parents:
    node = node[part]
  return node.pop(leaf)


def flatten(tree: dict, sep: str = CONFIG_SEP) -> dict:
  """{'a.b': leaf} of a nested plain dict (an empty dict is a leaf)."""
  return traverse_util.flatten_dict(tree, keep_empty_nodes=False, sep=sep)


def keys(tree, sep: str = CONFIG_SEP) -> list[str]:
  """Every leaf path of a nested dict or ConfigDict, in its order."""
  out = []
  for key, value in tree.items():
    if hasattr(value, 'keys'):
      out += [f'{key}{sep}{sub}' for sub in keys(value, sep)]
    else:
      out.append(key)
  return out
