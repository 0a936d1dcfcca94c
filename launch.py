r"""The one entry point.

  python launch.py --config configs/mgtil_synth.py --workdir runs/default
  python launch.py --config configs/mgtil_synth.py:method=l2 --workdir runs/l2
  python launch.py --config configs/mgtil_synth.py --workdir runs/compare \
      --compare=all         # every method, then a comparison table
  python launch.py --config configs/mgtil_synth.py --workdir runs/compare \
      --compare=ft,zscl,primed --seeds=3   # workdir/seed_<seed>/<method>,
                            # mean ± std, 95% CIs, paired differences

Multi-host (GPU/TPU pods): pass --multihost on every host; it calls
`jax.distributed.initialize()` before any device is touched (on TPU and
SLURM/Open MPI the arguments are discovered; otherwise pass
--coordinator_address, --num_processes and --process_id).
Running the same command again resumes from the last checkpoint.
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/mgtil_synth.py', 'Experiment config (file[:args]).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'runs/default',
                               'Where checkpoints, results and plots go.')
_COMPARE = flags.DEFINE_string(
    'compare', None, "Run several methods ('all' or a comma-separated list) "
    'in workdir/<method> and write comparison.{md,json,png}.')
_SEEDS = flags.DEFINE_integer(
    'seeds', None, 'Run each method (or the one run) with this many seeds, '
    'config.seed, config.seed + 1, ..., in workdir/seed_<seed>/<method>, and '
    'tabulate mean ± std and CIs (default: config.seeds, else 1).')
_MULTIHOST = flags.DEFINE_bool('multihost', False,
                               'Call jax.distributed.initialize() first.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0 (multi-host).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Number of processes (multi-host).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'This process index (multi-host).')


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  if _MULTIHOST.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  # orbax and jax log every checkpoint write at INFO; the progress bars and
  # the final table are what a user reads.
  logging.set_verbosity(logging.WARNING)
  # bm25s logs every index build at DEBUG through its own logger.
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  std_logging.getLogger('bm25s').setLevel(std_logging.WARNING)
  from mgtil_jax import compare, train  # pylint: disable=g-import-not-at-top
  seeds = (_CONFIG.value.get('seeds', 1) if _SEEDS.value is None
           else _SEEDS.value)
  if _COMPARE.value or seeds != 1:  # exits 1 if any run failed
    return compare.main(_CONFIG.value, _WORKDIR.value, _COMPARE.value, seeds)
  else:
    train.run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
