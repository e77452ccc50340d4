"""The `mtl-jax` command line: train, evaluate, demo, build-data, predict, pseudo-label, estimate.

One vocabulary in every verb: `--workdir` is a run folder, `--checkpoint
best|latest` which of its checkpoints. The older spellings (`predict
--checkpoint WORKDIR`, `--which`, the `plan` verb) still work for one release
and print a one-line deprecation (`_deprecated`).

A thin layer (flax-examples style): parse arguments, load the config, call
`train.train_in_stages` (`train.train_and_evaluate`, after a pre-training
stage if the config has one) or friends. A user mistake (`errors.UserError`:
bad config, missing dataset, incompatible checkpoint, bad input file) ends
with one line on stderr and exit status 2; `--debug` shows its traceback.
`predict --skip_bad` exits 3 when some studies of a batch failed (the rest written).
Any other exception is a bug in mtl-jax: its traceback is printed, then a
line saying so, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from mtl_jax import logs
from mtl_jax.config import loader
from mtl_jax.data.preprocess import LUNG_WINDOW
from mtl_jax.errors import UserError

# Multi-device CPU simulation and quiet logs must be set before jax starts.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='mtl-jax', description='Multi-task chest CT: COVID-19 classification, '
      'lesion segmentation and slice reconstruction in one JAX/Flax network.')
  parser.add_argument('--debug', action='store_true',
                      help='show full tracebacks instead of one-line errors')
  sub = parser.add_subparsers(dest='command', required=True)

  train = sub.add_parser('train', help='train (resumes if WORKDIR has a run)',
                         epilog='Any --config.KEY=VALUE overrides that key.')
  train.add_argument('--config', default=loader.DEFAULT_CONFIG,
                     help='config file, optionally with :PRESET (default: %(default)s)')
  train.add_argument('--workdir', required=True)
  _add_distributed_flags(train)

  evaluate = sub.add_parser('evaluate', help='evaluate a checkpoint on a split')
  evaluate.add_argument('--workdir', required=True)
  evaluate.add_argument('--split', default='validation',
                        choices=('train', 'validation', 'test'))
  evaluate.add_argument('--checkpoint', default='best', choices=('best', 'latest'))
  evaluate.add_argument('--tta', action='store_true',
                        help='average with a left-right flip, as predict --tta '
                        '(writes eval_SPLIT[_latest]_tta.json)')
  _add_distributed_flags(evaluate)

  demo = sub.add_parser('demo', help='build synthetic CT, train, evaluate, report')
  demo.add_argument('--workdir', default='runs/demo')
  demo.add_argument('--config', default=loader.DEMO_CONFIG)

  build = sub.add_parser('build-data', help='build a TFDS dataset (array_record)')
  build.add_argument('name')
  build.add_argument('--data_dir', default=os.environ.get('MTL_DATA_DIR', 'data'))
  build.add_argument('--image_size', type=int, default=None,
                     help='stored slice size (default: the dataset\'s own)')
  build.add_argument('--manual_dir', default=None,
                     help='folder holding the source files, for real datasets (default: '
                          '$MTL_MANUAL_DIR/<the source\'s folder>, docs/data.md)')
  build.add_argument('--skip_bad', action='store_true',
                     help='leave out bad files (recorded in the metadata)')
  build.add_argument('--window_hu', type=float, nargs=2, metavar=('LOW', 'HIGH'),
                     default=None, help='HU window CT volumes are rendered with '
                     f'(default: the lung window {LUNG_WINDOW[0]:g} {LUNG_WINDOW[1]:g}); '
                     'recorded in the dataset')
  build.add_argument('--fold', type=int, default=None,
                     help='cross-validation: hold out fold K of a seeded permutation '
                     '(0..4 with the usual 20%% held out); default 0')
  build.add_argument('--use_pseudo_masks', action='store_true',
                     help='covid19_ct_seg slice folders: store the model-made '
                     'pseudo_masks/ as pseudo labels (soft_mask), never as ground truth')

  label = sub.add_parser(
      'pseudo-label', help='self-training: a trained model labels a dataset\'s unmasked '
      'slices', description='Stores the teacher\'s lesion (and class) probabilities for '
      'every training slice without a ground-truth mask beside the built dataset, as a '
      'label set that training reads with --config.data.pseudo_labels=NAME '
      '--config.loss.pseudo_weight=W.')
  _add_workdirs(label, 'the teacher\'s training WORKDIR', several=False)
  label.add_argument('--dataset', required=True, help='a built dataset, e.g. covid19_ct_seg')
  label.add_argument('--data_dir', default=os.environ.get('MTL_DATA_DIR', 'data'))
  label.add_argument('--name', default=None,
                     help='label set name (default: the teacher workdir\'s name)')
  label.add_argument('--tta', action='store_true', help='average with a left-right flip')
  label.add_argument('--batch_size', type=int, default=None)

  estimate_help = ('estimate a job\'s cost: compile its steps for N devices, print memory, '
                   'FLOPs, communication and a predicted step time (runs nothing; `plan` is '
                   'its old name)')
  sizing = sub.add_parser(
      'estimate', aliases=['plan'], help=estimate_help, description=estimate_help,
      epilog='Defaults come from the config\'s hardware section. Any --config.KEY=VALUE '
      'overrides that key.')
  sizing.add_argument('--config', required=True)
  sizing.add_argument('--devices', type=int, default=None,
                      help='data-parallel devices (default: config.hardware.devices, or 1)')
  sizing.add_argument('--peak_tflops', type=float, default=None,
                      help='peak TFLOP/s per device (default: config.hardware.peak_tflops)')
  sizing.add_argument('--mfu', type=float, default=0.4,
                      help='assumed model FLOPs utilisation (default: %(default)s)')
  sizing.add_argument('--interconnect_gb_s', type=float, default=None,
                      help='all-reduce bandwidth per device, GB/s')
  sizing.add_argument('--device_memory_gb', type=float, default=None,
                      help='fail when a step needs more (default: config.hardware.memory_gb)')
  sizing.add_argument('--json', default=None, help='also write the figures here')

  export = sub.add_parser(
      'export-model', help='a run\'s checkpoint as an exported model folder: weights at '
      'a smaller precision, its record, validation measured on them, a model card')
  export.add_argument('--workdir', required=True)
  export.add_argument('--checkpoint', default='best', choices=CHECKPOINTS)
  export.add_argument('--output', required=True, help='the model folder (replaced atomically)')
  export.add_argument('--dtype', default='float16', choices=('float16', 'bfloat16', 'float32'))

  predict = sub.add_parser(
      'predict', help='segment, classify and grade a CT study (or a batch)',
      description='Input: NIfTI, DICOM series folder/.dcm, PNG/JPG, or a folder/CSV '
      '(input[,mask]) of them. Writes lesion_mask, report.json and overview.png.')
  _add_workdirs(predict, 'training WORKDIR; several: an ensemble (e.g. the '
                'cross-validation folds), probabilities averaged', several=True)
  predict.add_argument('--input', required=True)
  predict.add_argument('--output', required=True, help='output folder (replaced '
                       'atomically; untouched on error)')
  predict.add_argument('--batch_size', type=int, default=None,
                       help='slices per batch (default: the eval batch size)')
  predict.add_argument('--tta', action='store_true', help='average with a left-right flip')
  predict.add_argument('--series', default=None, help='DICOM SeriesInstanceUID to use')
  predict.add_argument('--save_probability', action='store_true',
                       help='also write lesion_probability (0..255)')
  predict.add_argument('--output_type', default='nifti', choices=('nifti', 'dicom_seg'),
                       help='dicom_seg: also write lesion_seg.dcm, a DICOM-SEG that '
                       'references the source series (DICOM input)')
  predict.add_argument('--refuse_ood', action='store_true',
                       help='a study flagged out of distribution is an error (exit 2, '
                       'nothing written) instead of a report marked not reliable')
  predict.add_argument('--skip_bad', action='store_true',
                       help='batch: a study that fails is listed in batch_summary.json '
                       '(`failed`) and the rest are written; exit 3 when any failed')
  return parser


def _add_workdirs(parser, help_text: str, several: bool):
  """--workdir (one run, or several) and --checkpoint best|latest; the older
  --checkpoint WORKDIR and --which are read by `_workdirs_and_checkpoint`."""
  if several:
    parser.add_argument('--workdir', nargs='+', action='extend', default=[],
                        metavar='WORKDIR', help=help_text)
  else:
    parser.add_argument('--workdir', action='append', default=[], help=help_text)
  parser.add_argument('--checkpoint', nargs='+', action='extend', default=[],
                      metavar='best|latest', help='which checkpoint of the run '
                      '(default: best)')
  parser.add_argument('--which', default=None, choices=CHECKPOINTS, help=argparse.SUPPRESS)


CHECKPOINTS = ('best', 'latest')
SOME_FAILED = 3  # exit status of a --skip_bad batch where some studies failed


def _deprecated(command: str, old: str, new: str):
  print(f'mtl-jax {command}: {old} is deprecated and goes in the next release: use {new}',
        file=sys.stderr)


def _workdirs_and_checkpoint(args) -> tuple[list[str], str]:
  """(run folders, 'best'|'latest') of predict / pseudo-label, old spellings
  included: `--checkpoint WORKDIR [...]` (a folder, not best|latest) and
  `--which best|latest`."""
  workdirs, which = list(args.workdir), 'best'
  given = list(args.checkpoint)
  if len(given) == 1 and given[0] in CHECKPOINTS:
    which = given[0]
  elif given:
    _deprecated(args.command, '--checkpoint WORKDIR', '--workdir WORKDIR (--checkpoint '
                'takes best|latest)')
    workdirs += given
  if args.which:
    _deprecated(args.command, f'--which {args.which}', f'--checkpoint {args.which}')
    which = args.which
  if not workdirs and args.command == 'predict':
    from mtl_jax import exported  # pylint: disable=g-import-not-at-top
    shipped = exported.shipped()
    if shipped is None:
      raise UserError('--workdir WORKDIR is required (the training run to use): this '
                      'install ships no model; `make demo` trains a synthetic one, '
                      'docs/training.md a real one')
    print(f'mtl-jax predict: no --workdir given: using the model shipped with mtl-jax '
          f'({shipped}; what it is and how good: {exported.CARD_FILE} there)',
          file=sys.stderr)
    workdirs = [shipped]
  if not workdirs:
    raise UserError('--workdir WORKDIR is required (the training run to use)')
  if args.command != 'predict' and len(workdirs) > 1:
    raise UserError(f'--workdir takes one run here, got {len(workdirs)}')
  return workdirs, which


def _add_distributed_flags(parser):
  group = parser.add_argument_group(
      'multi-host', 'auto-detected on Cloud TPU and SLURM; give all three elsewhere')
  group.add_argument('--coordinator_address', default=None, help='HOST:PORT of process 0')
  group.add_argument('--num_processes', type=int, default=None)
  group.add_argument('--process_id', type=int, default=None)


def main(argv: list[str] | None = None) -> int:
  """The `mtl-jax` entry point: the exit status (0 done, 2 a user mistake)."""
  argv = sys.argv[1:] if argv is None else argv
  overrides = [a for a in argv if a.startswith('--config.')]
  args = _parser().parse_args([a for a in argv if not a.startswith('--config.')])
  logs.setup_console()
  if isinstance(getattr(args, 'workdir', None), str):  # one run folder: its log
    logs.log_to_file(args.workdir)
  try:
    return _run(args, overrides)
  except UserError as e:
    if args.debug:
      raise
    print(f'mtl-jax {args.command}: error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f'mtl-jax {args.command}: interrupted; rerun the same command to resume',
          file=sys.stderr)
    return 130
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()
    print(f'mtl-jax {args.command}: internal error: this is a bug in mtl-jax, not a '
          'problem with your input; please report it with the traceback above',
          file=sys.stderr)
    return 1


def _run(args, overrides) -> int:
  if args.command in ('estimate', 'plan'):  # before jax starts: it may simulate devices
    if args.command == 'plan':
      _deprecated('plan', 'the verb `plan`', '`mtl-jax estimate`')
    return _estimate(args, overrides)
  # Imports here keep `mtl-jax --help` fast and errors in argument parsing cheap.
  from mtl_jax import demo, evaluation, metrics_summary, train  # pylint: disable=g-import-not-at-top

  if overrides and args.command in ('predict', 'build-data', 'pseudo-label'):  # export-model takes eval overrides
    raise UserError(f'{args.command} takes no --config.KEY=VALUE overrides (got '
                    f'{overrides[0]}); see mtl-jax {args.command} --help')
  if args.command in ('train', 'evaluate'):
    from mtl_jax import distributed  # pylint: disable=g-import-not-at-top
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  config = (loader.load_training_config(args.config, overrides)
            if args.command == 'train' else None)
  if args.command != 'build-data':  # a missing GPU/TPU backend: one line, not a bug
    from mtl_jax import backends  # pylint: disable=g-import-not-at-top
    backends.require(config)
  if args.command == 'train':
    train.train_in_stages(config, args.workdir)
  elif args.command == 'evaluate':
    results = evaluation.evaluate_workdir(args.workdir, args.split, which=args.checkpoint,
                                          overrides=overrides, tta=args.tta)
    print(metrics_summary.results_table({args.split: results}))
  elif args.command == 'demo':
    demo.run_demo(args.workdir, args.config, overrides)
  elif args.command == 'build-data':
    kwargs = {key: value for key, value in (('manual_dir', args.manual_dir),
                                            ('skip_bad', args.skip_bad),
                                            ('window_hu', args.window_hu),
                                            ('use_pseudo_masks', args.use_pseudo_masks),
                                            ('fold', args.fold))
              if value}
    if args.window_hu and not args.window_hu[0] < args.window_hu[1]:
      raise UserError(f'--window_hu {args.window_hu[0]:g} {args.window_hu[1]:g}: LOW must '
                      f'be below HIGH (the lung window is {LUNG_WINDOW[0]:g} '
                      f'{LUNG_WINDOW[1]:g})')
    if 'use_pseudo_masks' in kwargs and args.name != 'covid19_ct_seg':
      raise UserError(f'--use_pseudo_masks is for covid19_ct_seg, not {args.name}')
    from mtl_jax.tfds_builders import registry  # pylint: disable=g-import-not-at-top
    path = registry.build_dataset(args.name, args.data_dir, args.image_size, **kwargs)
    print(path)
  elif args.command == 'pseudo-label':
    from mtl_jax import pseudo_label  # pylint: disable=g-import-not-at-top
    (workdir,), which = _workdirs_and_checkpoint(args)
    print(pseudo_label.run(workdir=workdir, dataset=args.dataset, data_dir=args.data_dir,
                           name=args.name, which=which, tta=args.tta,
                           batch_size=args.batch_size))
  elif args.command == 'export-model':
    from mtl_jax import shipping  # pylint: disable=g-import-not-at-top
    done = shipping.export_model(args.workdir, args.output, which=args.checkpoint,
                                 dtype=args.dtype, overrides=overrides)
    print(f'{done["path"]}: {done["size_mb"]:.1f} MB; {args.dtype} minus float32 on '
          'validation: ' + ', '.join(f'{k} {v:+.4f}' for k, v in done['differences'].items()
                                     if v is not None))
  elif args.command == 'predict':
    from mtl_jax import predict  # pylint: disable=g-import-not-at-top
    workdirs, which = _workdirs_and_checkpoint(args)
    results = predict.run(workdirs, args.input, args.output, batch_size=args.batch_size,
                          tta=args.tta, series=args.series,
                          save_probability=args.save_probability, which=which,
                          refuse_ood=args.refuse_ood, skip_bad=args.skip_bad,
                          output_type=args.output_type)
    if results.failed:
      return SOME_FAILED
  return 0


def _estimate(args, overrides) -> int:
  config = loader.load_training_config(args.config, overrides)
  hw = config.hardware
  devices = args.devices if args.devices is not None else (hw.devices or 1)
  flags = os.environ.get('XLA_FLAGS', '')
  if devices > 1 and 'xla_force_host_platform_device_count' not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={devices}'
  from mtl_jax import jsonio, sizing  # pylint: disable=g-import-not-at-top
  pick = lambda given, default: default if given is None else given
  result = sizing.plan(config, devices, pick(args.peak_tflops, hw.peak_tflops), args.mfu,
                       pick(args.interconnect_gb_s, hw.interconnect_gb_s),
                       pick(args.device_memory_gb, hw.memory_gb))
  if hw.name:
    other = (f' (its hardware section; sized for --devices {devices}, not its {hw.devices})'
             if hw.devices and devices != hw.devices else '')
    print(f'target: {hw.name}{other}')
  print(sizing.describe(result))
  if args.json:
    jsonio.write_json(args.json, result, sort_keys=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
