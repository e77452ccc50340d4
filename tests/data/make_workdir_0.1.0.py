"""Make tests/data/legacy_workdir_0.1.0 with the code of 1fc965e (mtl-jax 0.1.0)."""
import os, sys, shutil
os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
from tfds_builders import registry
from mtl_jax import config_loader, train
out = sys.argv[1]
data = '/tmp/legacy_data'
registry.build_dataset('synthetic_ct', data, 64, num_train=64, num_validation=32, num_test=32)
config = config_loader.load_config('configs/default.py:tiny')
config.data.data_dir = data
config.train.num_train_steps = 2
config.train.eval_every_steps = config.train.checkpoint_every_steps = 2
config.eval.bootstrap_resamples = 0
shutil.rmtree(out, ignore_errors=True)
train.train_and_evaluate(config, out)
