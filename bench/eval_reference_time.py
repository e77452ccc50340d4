"""Time a training evaluation with and without reusing its validation pass
for the best checkpoint's OOD reference (evaluation.evaluate's held_out).

  python bench/eval_reference_time.py WORKDIR [--rounds 2]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtl_jax import evaluation, predict  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdir')
  parser.add_argument('--rounds', type=int, default=2)
  args = parser.parse_args(argv)
  predictor = predict.Predictor(args.workdir)
  runtime, variables = predictor.runtime, predictor.variables
  plain, extras = runtime.predict_fn(), runtime.predict_fn(extras=True)
  for fn in (plain, extras):  # compile both outside the timings
    evaluation.evaluate(runtime, fn, variables, 'validation', 8)
  for round_ in range(args.rounds):
    t0 = time.time()
    evaluation.evaluate(runtime, plain, variables, 'validation', -1)
    t1 = time.time()
    evaluation.reference_recon_errors(runtime, plain, variables)
    evaluation.reference_features(runtime, variables)
    t2 = time.time()
    held_out = {}
    evaluation.evaluate(runtime, extras, variables, 'validation', -1, held_out)
    t3 = time.time()
    evaluation.reference_recon_errors(runtime, extras, variables, held_out=held_out)
    evaluation.reference_features(runtime, variables, held_out=held_out)
    t4 = time.time()
    print(f'round {round_}: separate sweeps: eval {t1 - t0:.1f} s + reference {t2 - t1:.1f} s'
          f' = {t2 - t0:.1f} s; reused pass: eval {t3 - t2:.1f} s + reference '
          f'{t4 - t3:.1f} s = {t4 - t2:.1f} s', flush=True)


if __name__ == '__main__':
  main()
