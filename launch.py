r"""The one entry point.

  python launch.py --config configs/mgtil_synth.py --workdir runs/default
  python launch.py --config configs/mgtil_synth.py:method=l2 --workdir runs/l2
  python launch.py --config configs/mgtil_synth.py --workdir runs/compare \
      --compare=all         # every method, then a comparison table

Multi-host (GPU/TPU pods): pass --multihost on every host; it calls
`jax.distributed.initialize()` before any device is touched (on TPU and
SLURM/Open MPI the arguments are discovered; otherwise pass
--coordinator_address, --num_processes and --process_id).
Running the same command again resumes from the last checkpoint.
"""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/mgtil_synth.py', 'Experiment config (file[:args]).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'runs/default',
                               'Where checkpoints, results and plots go.')
_COMPARE = flags.DEFINE_string(
    'compare', None, "Run several methods ('all' or a comma-separated list) "
    'in workdir/<method> and write comparison.{md,json,png}.')
_VERBOSE = flags.DEFINE_bool(
    'verbose', False, 'Show third-party INFO logs (orbax, tfds, bm25s, '
    'ScaNN); by default only warnings, progress bars and results.')
_SWEEP = flags.DEFINE_string(
    'sweep', None, 'FIELD=V1,V2,...: one run per value in workdir/<field>=<v>'
    ' and sweep.{md,json} (e.g. method_kwargs.alpha=0.5,1,1.5).')
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
  from mgtil_jax import logs  # pylint: disable=g-import-not-at-top
  logs.setup(verbose=_VERBOSE.value)
  from mgtil_jax import compare, train  # pylint: disable=g-import-not-at-top
  if _SWEEP.value:
    from mgtil_jax import sweep  # pylint: disable=g-import-not-at-top
    sweep.sweep(_CONFIG.value, _WORKDIR.value, _SWEEP.value)
  elif _COMPARE.value:
    compare.compare(_CONFIG.value, _WORKDIR.value,
                    compare.parse_methods(_COMPARE.value))
  else:
    train.run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
