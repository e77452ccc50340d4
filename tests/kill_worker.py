"""`mtl-jax train` that SIGKILLs itself at a chosen instant (run by test_kill_resume.py).

  python tests/kill_worker.py EVENT:N -- mtl-jax train arguments ...

The process kills itself (SIGKILL: no cleanup, no `finally`) at the N-th
occurrence, counted from its start, of EVENT:
  step            a training batch was fetched, before its step runs
  eval            an evaluation batch was fetched (mid-evaluation)
  write:WHICH     inside a save to WHICH (latest|best): the step's items are
                  written in orbax's temporary folder, the state not yet renamed
  commit:WHICH    the save to WHICH is complete, before its rename into place
  drop:WHICH      a checkpoint of WHICH is about to be removed
  remove:WHICH    a checkpoint of WHICH is half deleted
EVENT:N = none runs to the end. The hooks wrap os.rename, shutil.rmtree and
the input pipeline from outside; mtl-jax has no test code paths.
"""

import os
import re
import shutil
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

event, _, nth = sys.argv[1].rpartition(':')
nth = int(nth or 0)
counts = {}


def hit(name):
  counts[name] = counts.get(name, 0) + 1
  if name == event and counts[name] == nth:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def which(path):
  return 'best' if f'{os.sep}best{os.sep}' in os.path.abspath(path) + os.sep else 'latest'


real_rename, real_rmtree = os.rename, shutil.rmtree


def rename(src, dst, *args, **kwargs):
  src_name, dst_name = os.path.basename(str(src)), os.path.basename(str(dst))
  if src_name == 'state.orbax-checkpoint-tmp':
    hit(f'write:{which(src)}')
  elif re.fullmatch(r'\d+\.orbax-checkpoint-tmp.*', src_name):
    hit(f'commit:{which(src)}')
  elif dst_name.startswith('.discard-'):
    hit(f'drop:{which(src)}')
  return real_rename(src, dst, *args, **kwargs)


def rmtree(path, *args, **kwargs):
  if os.path.basename(str(path)).startswith('.discard-'):
    name = f'remove:{which(path)}'
    if event == name and counts.get(name, 0) + 1 == nth:
      files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
      for f in files[:len(files) // 2]:
        os.remove(f)
    hit(name)
  return real_rmtree(path, *args, **kwargs)


os.rename, shutil.rmtree = rename, rmtree

from mtl_jax import cli  # noqa: E402
from mtl_jax.data import pipeline  # noqa: E402

real_iterate, real_eval_batches = pipeline.iterate, pipeline.eval_batches


def iterate(*args, **kwargs):
  for batch in real_iterate(*args, **kwargs):
    hit('step')
    yield batch


def eval_batches(*args, **kwargs):
  for batch in real_eval_batches(*args, **kwargs):
    hit('eval')
    yield batch


pipeline.iterate, pipeline.eval_batches = iterate, eval_batches

if __name__ == '__main__':
  argv = sys.argv[sys.argv.index('--') + 1:]
  sys.exit(cli.main(argv[1:] if argv[0] == 'mtl-jax' else argv))
