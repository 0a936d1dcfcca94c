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


def sweep(config, workdir: str, spec: str) -> dict:
  from mgtil_jax import entry  # pylint: disable=g-import-not-at-top
  field, values = parse_sweep(spec, config)
  os.makedirs(workdir, exist_ok=True)
  rows = {}
  for value in values:
    name = f'{field.split(".")[-1]}={value}'
    out = os.path.join(workdir, name)
    # Process 0 decides for all (hosts.py), as compare does.
    done = hosts.lead_exists(os.path.join(out, 'results.json'),
                             'sweep_finished')
    results = compare._load(os.path.join(out, 'results.json')) if done else None  # pylint: disable=protected-access
    if results is None:
      cfg = config.copy_and_resolve_references()
      _set(cfg, field, value)
      cfg.cache_dir = cfg.cache_dir or os.path.join(os.path.abspath(workdir),
                                                    'cache')
      print(f'\n=== {field} = {value} ===')
      results = entry.run(cfg, out)  # validated, then run
    rows[name] = {'value': value, 'summary': results['summary'],
                  'wall_time_s': results.get('wall_time_s'),
                  'last_row': results['accuracy_matrix'][-1]}
    table = {'benchmark': config.data.name, 'method': config.method,
             'field': field, 'tasks': [t['name'] for t in results['tasks']],
             'methods': rows}
    write(workdir, table)
  print('\n' + format_table(table))
  return table


def format_table(table: dict) -> str:
  lines = compare.format_table(table).splitlines()
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
