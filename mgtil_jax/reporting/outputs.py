"""What a run and a comparison leave in their workdir: the PNGs,
report.html, the Markdown table and the JSON, each JSON written to a
temporary file and renamed."""

from __future__ import annotations

import json
import os

import numpy as np

from mgtil_jax.core import hosts
from mgtil_jax.reporting import comparison, figures, pages, tables


def _json_default(x):
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  if isinstance(x, (tuple, set)):
    return list(x)
  return str(x)


def write_run(workdir: str, results: dict):
  """The figures and report.html first, then the Markdown table, then
  results.json, the last two each written to a temporary file and renamed:
  a failure leaves the previous results whole, and results.json (what tools
  read) appears only once the rest succeeded."""
  pages.write_run(workdir, results, figures.write_figures(workdir, results))
  outputs = (('results.md', tables.format_table(results) + '\n'),
             ('results.json', json.dumps(results, indent=1,
                                         default=_json_default)))
  for name, text in outputs:  # results.json last
    tmp = os.path.join(workdir, name + '.tmp')
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, os.path.join(workdir, name))


def write_comparison(workdir: str, table: dict):
  """comparison.{json,md,png,html}, written by process 0 only (two
  processes renaming one temporary file raced: one of them failed, and the
  other then waited for it in the next method's first barrier)."""
  if not hosts.is_lead():
    return
  path = os.path.join(workdir, 'comparison.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(table, f, indent=1)
  os.replace(path + '.tmp', path)
  with open(os.path.join(workdir, 'comparison.md'), 'w') as f:
    f.write(comparison.format_table(table) + '\n')
  pages.write_comparison(
      workdir, table, comparison.plot(table, os.path.join(workdir, 'comparison.png')))
