"""Runs several methods (and seeds) on one benchmark and tabulates them.

  python launch.py --config configs/mgtil_synth.py --workdir runs/compare \
      --compare=all --seeds=3

Each method runs (or resumes) in `workdir/<method>` (one seed) or
`workdir/seed_<seed>/<method>` (several: seeds config.seed, config.seed + 1,
...) with the same config, data and budget except `config.method` and
`config.seed`. A finished run is reused only if the config it recorded in its
results.json equals the new one; otherwise the method is refused with the
differing fields named. A method that fails is recorded with its error line
and the comparison goes on; `main` returns 1 at the end if any failed. The
table (Markdown + JSON + PNG) is rewritten after every run, so an
interrupted comparison still shows what is done.

Rows of comparison.json (`table['methods'][name]`):
  summary       {metric: mean over seeds}  (fractions, as results.json)
  summary_std   {metric: sample std over seeds, or None with one seed}
  ci            {metric: [lo, hi] 95% t-interval of the mean, or None}
  per_seed      {seed: summary}
  diff          {'ft' | 'zscl': {metric: {'mean', 'ci': [lo, hi], ...}}}:
                this method minus the reference, paired by seed and task,
                with a bootstrap interval over seeds x tasks (stats.py)
  seeds, n_seeds, wall_time_s (mean), last_row (mean final row),
  error         None, or the error line of a failed / refused run
"""

from __future__ import annotations

import json
import os
import traceback

from mgtil_jax import methods
from mgtil_jax.core import hosts
from mgtil_jax.reporting import outputs
# The table itself (reporting/comparison.py), by its names here too.
from mgtil_jax.reporting.comparison import (METRICS, PAPER_ORDER_I,  # pylint: disable=unused-import
                                            REFERENCES, aggregate,
                                            format_table, paired_diffs, plot)

# Config fields that may differ between a finished run and a new one.
UNCHECKED_FIELDS = ('cache_dir', 'seeds')


def parse_methods(spec: str) -> tuple[str, ...]:
  names = methods.COMPARISON if spec == 'all' else tuple(
      n.strip() for n in spec.split(',') if n.strip())
  unknown = [n for n in names if n not in methods.METHODS]
  if unknown or not names:
    raise ValueError(f'--compare: unknown methods {unknown}; expected all or '
                     f'a comma-separated list from {sorted(methods.METHODS)}')
  return names


def seed_list(config, seeds: int | None = None) -> list[int]:
  """config.seed, config.seed + 1, ... (`seeds` or config.seeds of them)."""
  n = config.get('seeds', 1) if seeds is None else seeds
  if not isinstance(n, int) or n < 1:
    raise ValueError(f'--seeds / config.seeds: expected an integer >= 1, '
                     f'got {n!r}')
  return [int(config.seed) + i for i in range(n)]


def _load(path: str):
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return None


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_diff(recorded: dict, config) -> list[str]:
  """Fields whose value in `config` differs from the config a finished run
  recorded (JSON round trip, so tuples and lists compare equal); fields only
  the recorded config has are ignored, UNCHECKED_FIELDS too."""
  new = _flatten(json.loads(json.dumps(config.to_dict(), default=str)))
  old = _flatten(json.loads(json.dumps(recorded, default=str)))
  return sorted(k for k in new if k.split('.')[0] not in UNCHECKED_FIELDS
                and (k not in old or old[k] != new[k]))


def _finished(config, out: str) -> dict:
  """{'reuse': bool, 'error': str | None} for a finished run in `out`."""
  results = _load(os.path.join(out, 'results.json'))
  if results is None:
    return {'reuse': False, 'error': None}
  diff = config_diff(results.get('config', {}), config)
  if diff:
    shown = ', '.join(diff[:6]) + (' ...' if len(diff) > 6 else '')
    return {'reuse': False,
            'error': f'{out}/results.json was made with a different config '
                     f'({shown}); delete {out} or use another --workdir'}
  return {'reuse': True, 'error': None}


def _run_one(config, out: str) -> dict:
  """results.json of a finished run with the same config, else a fresh run;
  raises ValueError naming the fields when a finished run's config differs.
  Process 0 decides for every process (hosts.py): a process that reused a
  run while another trained it would wait in the other's collectives."""
  from mgtil_jax import entry  # pylint: disable=g-import-not-at-top
  found = hosts.lead_value('compare_finished', _finished(config, out)
                           if hosts.is_lead() else None)
  if found['error']:
    raise ValueError(found['error'])
  if found['reuse']:
    return _load(os.path.join(out, 'results.json'))
  return entry.run(config, out)  # validated, then run


def run_seed(config, base: str, name: str, seed: int, cache: str) -> dict:
  """Method `name` at `seed` in base/<name> (the layout of --compare and
  of a --sweep over seeds), reused or refused as _run_one says."""
  cfg = config.copy_and_resolve_references()
  cfg.method = name
  cfg.seed = seed
  cfg.cache_dir = cache
  return _run_one(cfg, os.path.join(base, name))


def _error_line(e: BaseException) -> str:
  lines = [l for l in traceback.format_exception_only(type(e), e)
           if l.strip()]
  return lines[-1].strip().splitlines()[0] if lines else type(e).__name__


def compare(config, workdir: str, names, seeds: int | None = None) -> dict:
  os.makedirs(workdir, exist_ok=True)
  seed_values = seed_list(config, seeds)
  cache = config.cache_dir or os.path.join(os.path.abspath(workdir), 'cache')
  results = {name: {} for name in names}
  errors = {}
  table = {'benchmark': config.data.name, 'tasks': [],
           'seeds': seed_values, 'methods': {}, 'failed': []}
  for seed in seed_values:
    base = (workdir if len(seed_values) == 1
            else os.path.join(workdir, f'seed_{seed}'))
    os.makedirs(base, exist_ok=True)
    for name in names:
      print(f'\n=== {name} (seed {seed}) ===')
      try:
        res = run_seed(config, base, name, seed, cache)
      except hosts.OutOfStepError:
        raise  # the processes parted: nothing later can run in step
      except Exception as e:  # pylint: disable=broad-except
        errors.setdefault(name, []).append(f'seed {seed}: {_error_line(e)}')
        if name not in table['failed']:
          table['failed'].append(name)
        traceback.print_exc()
        print(f'{name} (seed {seed}) failed: {errors[name][-1]}')
        _tabulate(table, results, errors, names)
        outputs.write_comparison(workdir, table)
        # A method that failed on one process only leaves the others
        # inside it: meet here, or fail with the barrier's name.
        hosts.sync(f'compare:{name}:{seed}')
        continue
      results[name][seed] = res
      table['tasks'] = [t['name'] for t in res['tasks']]
      _tabulate(table, results, errors, names)
      outputs.write_comparison(workdir, table)
      hosts.sync(f'compare:{name}:{seed}')
  _tabulate(table, results, errors, names)
  outputs.write_comparison(workdir, table)
  if hosts.is_lead():  # only process 0 prints results (README)
    print('\n' + format_table(table))
  return table


def _tabulate(table, results, errors, names):
  rows = {}
  for name in names:
    if results[name]:
      rows[name] = aggregate(results[name])
    else:
      rows[name] = {'summary': {}, 'summary_std': {}, 'ci': {}, 'seeds': [],
                    'n_seeds': 0, 'per_seed': {}, 'wall_time_s': None,
                    'last_row': None}
    rows[name]['error'] = '; '.join(errors[name]) if name in errors else None
    rows[name]['diff'] = {
        ref: paired_diffs(results[name], results[ref])
        for ref in REFERENCES if ref != name and ref in results
        and results[ref] and results[name]}
  table['methods'] = rows


def main(config, workdir: str, spec: str | None, seeds: int | None) -> int:
  """`launch.py --compare / --seeds`: 1 if any run failed, else 0."""
  names = parse_methods(spec) if spec else (config.method,)
  table = compare(config, workdir, names, seeds)
  return 1 if table['failed'] else 0
