"""One config field over several values: `launch.py --sweep=FIELD=V1,V2,...`.

Each value runs (or resumes) in `workdir/<field>=<value>` with the same
config, data, seed and budget otherwise (one shared data / pretraining
cache); a finished value is not run again. The table (Markdown + JSON) is
rewritten after every value. Every ablation of the paper is one command,
e.g. (docs/methods.md, "Ablations"):

  --sweep=method_kwargs.alpha=0.5,1,1.5
  --sweep=method_kwargs.regularizer=none,dfg
  --sweep=method_kwargs.teacher=previous,initial,wise
"""

from __future__ import annotations

import ast
import json
import os

from mgtil_jax.entry import compare
from mgtil_jax.core import hosts
from mgtil_jax.reporting import comparison
from mgtil_jax.reporting import outputs


def parse_sweep(spec: str, config) -> tuple[str, list]:
  """'a.b=v1,v2' -> ('a.b', [v1, v2]), values parsed as Python literals
  where possible; the field must exist in the config."""
  field, sep, values = spec.partition('=')
  field = field.strip()
  if not sep or not field or not values.strip():
    raise ValueError(f'--sweep: expected FIELD=V1,V2,... (e.g. '
                     f'method_kwargs.alpha=0.5,1), got {spec!r}')
  node = config
  for key in field.split('.'):
    if not hasattr(node, 'keys') or key not in node:
      raise ValueError(f'--sweep: config has no field {field!r}')
    node = node[key]
  out = []
  for v in values.split(','):
    v = v.strip()
    try:
      out.append(ast.literal_eval(v))
    except (ValueError, SyntaxError):
      out.append(v)
  return field, out


def _set(config, field: str, value):
  *parents, last = field.split('.')
  node = config
  for key in parents:
    node = node[key]
  old = node[last]
  if isinstance(old, float) and isinstance(value, int) and not isinstance(
      value, bool):
    value = float(value)  # ConfigDict keeps a field's type
  node[last] = value


def sweep(config, workdir: str, spec: str, seeds: int | None = None) -> dict:
  """One run per value in workdir/<field>=<value>; with `seeds` > 1 (or
  config.seeds), one per value and seed in workdir/<field>=<value>/
  seed_<s>/<method>, as --compare lays them out, and each value's row is
  its mean ± std and interval over the seeds with its paired difference
  against the first value (docs/metrics.md, "Seeds and intervals")."""
  field, values = parse_sweep(spec, config)
  seed_values = compare.seed_list(config, seeds)
  os.makedirs(workdir, exist_ok=True)
  rows, runs = {}, {}
  for value in values:
    name = f'{field.split(".")[-1]}={value}'
    cfg = config.copy_and_resolve_references()
    _set(cfg, field, value)
    cfg.cache_dir = cfg.cache_dir or os.path.join(os.path.abspath(workdir),
                                                  'cache')
    print(f'\n=== {field} = {value} ===')
    if len(seed_values) == 1:
      results = _one_seed(cfg, os.path.join(workdir, name))
      rows[name] = {'value': value, 'summary': results['summary'],
                    'wall_time_s': results.get('wall_time_s'),
                    'last_row': results['accuracy_matrix'][-1]}
    else:
      runs[name] = _seeds(cfg, os.path.join(workdir, name), seed_values)
      results = next(iter(runs[name].values()))
      first = next(iter(runs))
      rows[name] = dict(comparison.aggregate(runs[name]), value=value,
                        diff={} if name == first else {
                            first: comparison.paired_diffs(runs[name],
                                                           runs[first])})
    table = {'benchmark': config.data.name, 'method': config.method,
             'field': field, 'tasks': [t['name'] for t in results['tasks']],
             'seeds': seed_values, 'methods': rows}
    write(workdir, table)
  print('\n' + format_table(table))
  return table


def _one_seed(cfg, out: str) -> dict:
  """The value's run in `out` (the layout of a one-seed sweep)."""
  from mgtil_jax import entry  # pylint: disable=g-import-not-at-top
  # Process 0 decides for all (hosts.py), as compare does.
  done = hosts.lead_exists(os.path.join(out, 'results.json'),
                           'sweep_finished')
  results = compare._load(os.path.join(out, 'results.json')) if done else None  # pylint: disable=protected-access
  if results is None:
    results = entry.run(cfg, out)  # validated, then run
  return results


def _seeds(cfg, out: str, seed_values) -> dict:
  """{seed: results.json} of the value's runs in out/seed_<s>/<method>; a
  finished run with the same config is reused, one with another refused
  (compare.run_seed)."""
  found = {}
  for seed in seed_values:
    print(f'--- seed {seed} ---')
    base = os.path.join(out, f'seed_{seed}')
    os.makedirs(base, exist_ok=True)
    found[seed] = compare.run_seed(cfg, base, cfg.method, seed, cfg.cache_dir)
  return found


def format_table(table: dict) -> str:
  first = next(iter(table['methods']), None)
  lines = comparison.format_table(table, references=(first,)).splitlines()
  lines[0] = (f"Sweep of {table['field']} for method '{table['method']}' on "
              f"{table['benchmark']} ({len(table['tasks'])} tasks); accuracy "
              'in %')
  lines[2] = lines[2].replace('| method |', '| value |')
  return '\n'.join(lines)


def write(workdir: str, table: dict):
  if not hosts.is_lead():  # one writer (see compare.write)
    return
  path = os.path.join(workdir, 'sweep.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(table, f, indent=1, default=outputs._json_default)  # pylint: disable=protected-access
  os.replace(path + '.tmp', path)
  with open(os.path.join(workdir, 'sweep.md'), 'w') as f:
    f.write(format_table(table) + '\n')
