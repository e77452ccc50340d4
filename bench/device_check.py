"""The measurements of bench/device_check.sh: the paper-size train step on one
accelerator against `mtl-jax estimate`'s prediction, and one Markdown table.

  python bench/device_check.py step --dtype bfloat16 --batch 32 --steps 20 --json OUT.json
  python bench/device_check.py table STEP.json... [--predict PREDICT.json]

`step` trains configs/default.py:full (256x256, the paper-size model) on a
synthetic batch (bench/train_step.py's), times --steps steps after one
warm-up, reads the device's peak memory, and sizes the same config with
`mtl-jax estimate`'s own function (mtl_jax.sizing.plan, compiled for this
backend) at its default MFU of 0.4. One dtype per process, so that each
peak memory is its own. MFU is against the card's dense peak at that dtype
(PEAKS; f32 runs on TF32 tensor cores at JAX's default matmul precision, so
its MFU is against TF32's peak, with the plain-f32 figure beside it).
`table` joins the JSON files (and bench/predict_volume.py --json's) into one
table for bench/RESULTS.md. Runs on CPU too, with --preset tiny, for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Dense peak TFLOP/s of one NVIDIA H100 SXM (NVIDIA's datasheet, without
# sparsity): (the peak MFU is measured against, what it is).
PEAKS = {'bfloat16': (989.0, 'H100 SXM dense bf16'),
         'float32': (495.0, 'H100 SXM dense TF32 (JAX\'s default f32 matmul precision)')}
PLAIN_F32_PEAK = 67.0  # H100 SXM f32 without tensor cores
MFU_ASSUMED = 0.4  # mtl-jax estimate's default --mfu


def step(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import train_step as bench  # bench/train_step.py  # pylint: disable=g-import-not-at-top
  from mtl_jax import sizing  # pylint: disable=g-import-not-at-top

  bench.BATCH[args.preset] = args.batch
  timed = bench.JaxBench(args.preset, args.dtype)
  seconds = min(timed.train_seconds(args.steps) for _ in range(2))
  stats = jax.devices()[0].memory_stats() or {}
  peak, peak_name = PEAKS[args.dtype]
  if args.peak_tflops:
    peak, peak_name = args.peak_tflops, f'--peak_tflops {args.peak_tflops:g}'
  flops = timed.train_flops_per_slice * args.batch  # per step, XLA's cost analysis
  predicted = sizing.plan(timed.config, 1, peak, MFU_ASSUMED, 0.0, 0.0)
  return {
      'preset': args.preset, 'dtype': args.dtype, 'batch': args.batch, 'steps': args.steps,
      'device': f'{jax.devices()[0].device_kind} ({jax.default_backend()})',
      'jax': jax.__version__, 'compile_s': timed.compile_seconds,
      'ms_per_step': seconds * 1e3, 'steps_per_s': 1 / seconds,
      'slices_per_s': args.batch / seconds, 'tflops_achieved': flops / seconds / 1e12,
      'peak_tflops': peak, 'peak_name': peak_name,
      'mfu': flops / seconds / (peak * 1e12),
      'mfu_plain_f32': (flops / seconds / (PLAIN_F32_PEAK * 1e12)
                        if args.dtype == 'float32' else None),
      'device_peak_bytes': int(stats.get('peak_bytes_in_use', 0)),
      'estimate_ms_per_step': predicted['step_seconds'] * 1e3,
      'estimate_peak_bytes': int(predicted['train']['peak_bytes']),
      'estimate_backend': predicted['backend'],
      'estimate_input_cores': predicted['input_cores'],
  }


def table(steps: list[dict], predict: dict | None) -> str:
  gib = lambda b: f'{b / 2**30:.2f}' if b else 'n/a'
  head = ('| measurement | device | batch | measured | slices/s | MFU (of peak) '
          '| `mtl-jax estimate` (MFU 0.4) | measured / estimate | peak memory GiB '
          '(measured / estimated) |')
  rows = [head, '|' + '---|' * 9]
  for s in steps:
    mfu = f'{s["mfu"]:.1%} of {s["peak_tflops"]:g} TFLOP/s ({s["peak_name"]})'
    if s.get('mfu_plain_f32') is not None:
      mfu += f'; {s["mfu_plain_f32"]:.0%} of plain f32\'s {PLAIN_F32_PEAK:g}'
    rows.append(
        f'| train step, {s["preset"]} {s["dtype"]} | {s["device"]}, jax {s["jax"]} '
        f'| {s["batch"]} | {s["ms_per_step"]:.1f} ms ({s["steps_per_s"]:.1f} steps/s) '
        f'| {s["slices_per_s"]:,.0f} | {mfu} | {s["estimate_ms_per_step"]:.1f} ms, '
        f'~{s["estimate_input_cores"]:.0f} input cores '
        f'| {s["ms_per_step"] / s["estimate_ms_per_step"]:.2f}x '
        f'| {gib(s["device_peak_bytes"])} / {gib(s["estimate_peak_bytes"])} |')
  if predict:
    rows.append(
        f'| predict {predict["volume"]} (`bench/predict_volume.py`) | {predict["device"]} '
        f'| {predict["batch"]} | {predict["end_to_end_s"]:.1f} s end to end, '
        f'{predict["read_write_s"]:.1f} s read→write | {predict["slices_per_s"]:,.1f} '
        f'| n/a | n/a | n/a | {gib(predict.get("device_peak_bytes"))} / n/a '
        f'(host RSS {predict["peak_rss_gib"]:.2f}) |')
  return '\n'.join(rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  s = sub.add_parser('step')
  s.add_argument('--dtype', choices=sorted(PEAKS), default='bfloat16')
  s.add_argument('--preset', default='full')
  s.add_argument('--batch', type=int, default=32)
  s.add_argument('--steps', type=int, default=20)
  s.add_argument('--peak_tflops', type=float, default=None,
                 help='the peak MFU is against (default: the H100 SXM\'s, PEAKS)')
  s.add_argument('--json', required=True)
  t = sub.add_parser('table')
  t.add_argument('steps', nargs='+')
  t.add_argument('--predict', default=None)
  args = parser.parse_args(argv)
  if args.command == 'step':
    result = step(args)
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=1)
    print(json.dumps(result), flush=True)
  else:
    steps = []
    for path in args.steps:
      with open(path, encoding='utf-8') as f:
        steps.append(json.load(f))
    predict = None
    if args.predict and os.path.exists(args.predict):
      with open(args.predict, encoding='utf-8') as f:
        predict = json.load(f)
    print(table(steps, predict))
  return 0


if __name__ == '__main__':
  sys.exit(main())
