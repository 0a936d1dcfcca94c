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

--config file[:args] is an ml_collections config file; single fields are
overridden with --config.<field>=<value> (e.g. --config.train.lr=3e-4).
Every other flag is an ordinary absl flag defined below.

A mistake in the command, config, data or workdir prints one line
(`error: ...` naming the field or file and what was expected) and exits 2;
`--debug` shows its traceback. Bugs keep their tracebacks (exit 1).
"""

import os
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

_DEFAULT_CONFIG = 'configs/mgtil_synth.py'
app.define_help_flags()  # --help, --helpfull (app.run is not used)
_WORKDIR = flags.DEFINE_string('workdir', 'runs/default',
                               'Where checkpoints, results and plots go.')
_COMPARE = flags.DEFINE_string(
    'compare', None, "Run several methods ('all' or a comma-separated list) "
    'in workdir/<method> and write comparison.{md,json,png}.')
_SEEDS = flags.DEFINE_integer(
    'seeds', None, 'Run each method (or the one run) with this many seeds, '
    'config.seed, config.seed + 1, ..., in workdir/seed_<seed>/<method>, and '
    'tabulate mean ± std and CIs (default: config.seeds, else 1).')
_VERBOSE = flags.DEFINE_bool(
    'verbose', False, 'Show third-party INFO logs (orbax, tfds, bm25s, '
    'ScaNN); by default only warnings, progress bars and results.')
_SWEEP = flags.DEFINE_string(
    'sweep', None, 'FIELD=V1,V2,...: one run per value in workdir/<field>=<v>'
    ' and sweep.{md,json} (e.g. method_kwargs.alpha=0.5,1,1.5); with '
    '--seeds=N, N runs per value in workdir/<field>=<v>/seed_<s>/<method>.')
_MULTIHOST = flags.DEFINE_bool('multihost', False,
                               'Call jax.distributed.initialize() first.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0 (multi-host).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Number of processes (multi-host).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'This process index (multi-host).')
_DEBUG = flags.DEFINE_bool('debug', False,
                           'Show the traceback of input errors too.')


def main(config):
  """Runs the experiment of `config` and the parsed flags (raises on
  errors)."""
  import jax  # pylint: disable=g-import-not-at-top
  if _MULTIHOST.value:
    seconds = _coordinator_timeout_s()
    if _COORDINATOR.value and _PROCESS_ID.value:  # process 0 is the server
      _wait_for_coordinator(_COORDINATOR.value, seconds)
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value,
                               initialization_timeout=seconds)
  from mgtil_jax.core import logs  # pylint: disable=g-import-not-at-top
  logs.setup(verbose=_VERBOSE.value)
  # pylint: disable=g-import-not-at-top
  from mgtil_jax.entry import compare
  from mgtil_jax import training as train
  from mgtil_jax.entry import validation
  # The whole config, before any data, model or device work.
  validation.validate(config, _WORKDIR.value)
  seeds = config.get('seeds', 1) if _SEEDS.value is None else _SEEDS.value
  if not isinstance(seeds, int) or seeds < 1:
    from mgtil_jax.core import errors  # pylint: disable=g-import-not-at-top
    raise errors.UserError(f'--seeds: expected a positive integer, got '
                           f'{seeds!r}')
  if _SWEEP.value:
    from mgtil_jax.entry import sweep  # pylint: disable=g-import-not-at-top
    sweep.sweep(config, _WORKDIR.value, _SWEEP.value, seeds)
  elif _COMPARE.value or seeds != 1:  # exits 1 if any run failed
    return compare.main(config, _WORKDIR.value, _COMPARE.value, seeds)
  else:
    train.run(config, _WORKDIR.value)


def _coordinator_timeout_s() -> int:
  """How long a process waits for the coordinator: MGTIL_SYNC_TIMEOUT_S
  (the processes' barrier timeout, core/hosts.py) where it is set, else
  jax's default of 300 s."""
  from mgtil_jax.core import hosts  # pylint: disable=g-import-not-at-top
  return hosts.timeout_s() if os.environ.get(hosts.TIMEOUT_ENV) else 300


def _wait_for_coordinator(address: str, seconds: int):
  """Returns once the coordinator accepts connections at `address`, else
  raises one line naming it. (jax.distributed, whose registration times
  out, aborts the process from C++: no Python error to catch.)"""
  import socket  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from mgtil_jax.core import errors  # pylint: disable=g-import-not-at-top
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit():
    raise errors.UserError(f'--coordinator_address: expected host:port, got '
                           f'{address!r}')
  deadline = time.monotonic() + seconds
  while True:
    try:
      socket.create_connection((host.strip('[]'), int(port)), timeout=5).close()
      return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise errors.UserError(
            f'--coordinator_address {address}: no coordinator answered in '
            f'{seconds} s ({e.strerror or e}); start process 0 '
            '(--process_id=0) with the same address, or raise '
            'MGTIL_SYNC_TIMEOUT_S to wait longer') from None
      time.sleep(1)


def _split_config_args(argv):
  """(the --config / --config.field=value arguments, the others)."""
  config_args, rest = [], [argv[0]]
  args = iter(enumerate(argv[1:], 1))
  for i, arg in args:
    name = arg.lstrip('-').split('=', 1)[0]
    if arg.startswith('-') and (name == 'config' or name.startswith(
        ('config.', 'noconfig.'))):
      config_args.append(arg)
      nxt = argv[i + 1] if i + 1 < len(argv) else None
      if '=' not in arg and nxt is not None and not nxt.startswith('-') and (
          name == 'config' or not name.startswith('no')):
        config_args.append(next(args)[1])
    else:
      rest.append(arg)
  return config_args, rest


def load_config(config_args):
  """The `ml_collections` config of `--config=file[:args]` plus
  `--config.field=value` overrides (a FlagValues of its own, so it can be
  parsed again in one process)."""
  values = flags.FlagValues()
  argv = ['launch.py'] + list(config_args)
  for i, arg in enumerate(config_args):
    path = (arg.split('=', 1)[1] if arg.startswith('--config=') else
            config_args[i + 1] if arg == '--config' and i + 1 < len(
                config_args) else None)
    if path is not None and not os.path.isfile(path.split(':', 1)[0]):
      raise FileNotFoundError(f'no config file {path.split(":", 1)[0]} '
                              '(expected a Python file with get_config)')
  holder = config_flags.DEFINE_config_file(
      'config', _DEFAULT_CONFIG, 'Experiment config (file[:args]).',
      flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  config = holder.value
  config.keys()  # a file that failed to load raises on first use: now
  return config


def _root_message(error: BaseException) -> BaseException:
  """The innermost cause whose message is not itself a traceback (a
  `raise ... from None` ends the chain: its message already says it)."""
  best = error
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if str(error) and 'Traceback (most recent call last)' not in str(error):
      best = error
    error = error.__cause__ or (None if error.__suppress_context__ else
                                error.__context__)
  return best


def _error(message: str) -> int:
  print(f'error: {message}', file=sys.stderr, flush=True)
  return 2


def main_cli(argv) -> int:
  """Parses `argv` (argv[0] = program) and runs; returns the exit code:
  0 done, 2 an input error (one line on stderr). Bugs raise."""
  from mgtil_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  from mgtil_jax.core import errors  # pylint: disable=g-import-not-at-top
  debug = '--debug' in argv
  config_args, rest = _split_config_args(list(argv))
  flags.FLAGS.unparse_flags()  # callable more than once (tests)
  try:
    flags.FLAGS(rest)
  except flags.Error as e:  # an unknown flag or a bad value
    return _error(errors.one_line(e))
  try:
    config = load_config(config_args)
  except Exception as e:  # pylint: disable=broad-except
    # A missing / broken config file, bad arguments to its get_config, an
    # unknown field or a mistyped value of an override.
    if debug:
      traceback.print_exc()
    if isinstance(e, (AttributeError, KeyError)):  # ml_collections: "'field'"
      field = str(e).strip('"\'')
      named = [a.split('=', 1)[0] for a in config_args
               if '.' + field + '.' in a.split('=', 1)[0] + '.']
      return _error(f'{named[0] if named else "--config"}: no such field in '
                    'the config (see the config file for its fields)')
    if str(e).startswith('flag --config.') and 'Traceback' not in str(e):
      return _error(errors.one_line(e))  # names the override and its value
    return _error(f'--config: {errors.one_line(_root_message(e))}')
  try:
    code = main(config)  # 1 when a run of a comparison failed
  except Exception as e:  # pylint: disable=broad-except
    checkpoint.finish_all()  # in-flight saves first; the error is printed last
    if not errors.is_user_error(e):
      raise
    if _DEBUG.value:
      traceback.print_exc()
    return _error(errors.one_line(e))
  return code or 0


if __name__ == '__main__':
  sys.exit(main_cli(sys.argv))
