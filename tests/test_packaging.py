"""Package boundaries (issue 38): configs and builders ship inside `mtl_jax`,
configs import only the config helpers, the library imports no config file,
and no development path is baked into the package."""

import ast
import pathlib
import subprocess
import sys
import tomllib

from conftest import REPO


def _imports(path: pathlib.Path) -> set:
  """Every module a Python file imports (absolute names; relative ones as '.')."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      names.add('.' if node.level else node.module)
  return names


def test_nothing_named_configs_or_tfds_builders_is_installed(tmp_path):
  """Outside a checkout only `mtl_jax` is importable, and the documented
  config paths still load (from the copy inside the package)."""
  code = ('import importlib.util as u\n'
          'assert u.find_spec("configs") is None and u.find_spec("tfds_builders") is None\n'
          'import mtl_jax.configs, mtl_jax.tfds_builders.registry as r\n'
          'assert "medseg_covid" in r.known_datasets()\n'
          'from mtl_jax.config import loader\n'
          'print(loader.load_config("configs/real.py:cpu").preset)\n')
  out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True,
                       text=True, check=True, env={'PATH': '/usr/bin:/bin'})
  assert out.stdout.strip() == 'real:cpu'


def test_every_builder_folder_is_a_listed_package():
  listed = set(tomllib.loads((REPO / 'pyproject.toml').read_text())['tool']['setuptools'][
      'packages'])
  folders = {f'mtl_jax.tfds_builders.{p.name}' for p in (REPO / 'tfds_builders').iterdir()
             if (p / '__init__.py').exists()}
  assert folders <= listed, sorted(folders - listed)


def test_configs_import_only_the_config_helpers():
  for path in sorted((REPO / 'configs').glob('*.py')):
    ours = {n for n in _imports(path) if n.split('.')[0] in ('mtl_jax', 'configs', '.')}
    assert all(n == 'mtl_jax.config' or n.startswith('mtl_jax.config.') for n in ours), (
        path.name, ours)


def test_the_library_imports_no_config_file_and_bakes_in_no_checkout_path():
  for path in sorted((REPO / 'mtl_jax').rglob('*.py')) + sorted(
      (REPO / 'tfds_builders').rglob('*.py')):
    assert not {n for n in _imports(path) if n.split('.')[0] in ('configs', 'tfds_builders')
                or n.startswith('mtl_jax.configs')}, path
    assert 'shared/data' not in path.read_text().replace("shared' / 'data", 'shared/data'), path


def test_a_config_written_for_the_old_layout_gets_a_pointer(tmp_path):
  """Outside a checkout (where `configs` is no package), a config that imports
  `configs.default` is a one-line error naming what to import instead."""
  (tmp_path / 'mine.py').write_text('from configs import default\n\ndef get_config(arg=None):\n'
                                    '  return default.get_config(arg)\n')
  out = subprocess.run([sys.executable, '-m', 'mtl_jax', 'estimate', '--config', 'mine.py'],
                       cwd=tmp_path, capture_output=True, text=True,
                       env={'PATH': '/usr/bin:/bin'})
  assert out.returncode == 2, out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      "mtl-jax estimate: error: config file 'mine.py' imports 'configs', which is no longer "
      'a package: build on `from mtl_jax.config import schema` (schema.get_config(arg)), '
      'as configs/gpu8.py does')
