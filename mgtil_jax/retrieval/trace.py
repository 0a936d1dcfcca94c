"""What each task's reference set was made of, kept for people:
`<workdir>/retrieval/trace/task-<t>.json`, read by
notebooks/inspect_retrieval.ipynb.

Per task: the Dynamic Siphon's levels (task / domain / general; one level
'uniform' for PRIMED_uni) with every query, its domain, the candidates left
after each stage and its best corpus rows; the reference set's rows; and the
statistics `prepare` returns. Nothing here changes what is retrieved: the
source's `prepare` and its memory's `retrieve` are wrapped on the instance
and their results are written down as they pass.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from mgtil_jax.retrieval import queries as queries_lib
from mgtil_jax.retrieval import siphon

TRACE_DIR = 'trace'
MIN_ROWS_PER_QUERY = 8  # rows kept per query even when its quota is smaller


def path(root: str, task_index: int) -> str:
  return os.path.join(root, TRACE_DIR, f'task-{task_index}.json')


def record(source, root: str):
  """Makes `source` (a sampler.RetrievalReferenceSource) write a trace at
  every `prepare`; returns it."""
  calls = []
  retrieve = source.memory.retrieve
  prepare = source.prepare

  def recording_retrieve(texts, *args, **kwargs):
    out = retrieve(texts, *args, **kwargs)
    calls.append((list(texts), out))
    return out

  def traced_prepare(task_index, teacher_params):
    calls.clear()
    stats = prepare(task_index, teacher_params)
    if calls and jax.process_index() == 0:
      write(root, task_index, source, *calls[-1])
    calls.clear()
    return stats

  source.memory.retrieve = recording_retrieve
  source.prepare = traced_prepare
  return source


def _jsonable(x):
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (tuple, set)):
    return list(x)
  return str(x)


def _levels(source, texts, stats) -> list[tuple[str, int]]:
  """(level, quota) of each asked text: `prepare` asks the levels in
  siphon.LEVELS order and the siphon counts each level's queries."""
  cfg = source.cfg
  if cfg.mode == 'uni':
    return [('uniform', source.uni_k())] * len(texts)
  quotas = {'task': cfg.a, 'domain': cfg.b, 'general': cfg.c}
  out = []
  for level in siphon.LEVELS:
    out += [(level, int(quotas[level]))] * int(stats['queries'][level])
  return out if len(out) == len(texts) else [('?', cfg.k)] * len(texts)


def write(root: str, task_index: int, source, texts, results) -> str:
  stats = source.stats or {}
  domains = {q.text: q.domain for q in source.pool}
  if source.cfg.mode == 'dyn':
    domains.update({q.text: q.domain for q in queries_lib.task_queries(
        source.tasks, task_index, source.cfg.query_template,
        source.descriptions)})
  queries = []
  for text, (level, quota) in zip(texts, _levels(source, texts, stats)):
    result = results[text]
    keep = max(quota, MIN_ROWS_PER_QUERY)
    queries.append({'text': text, 'level': level, 'quota': quota,
                    'domain': domains.get(text, ''),
                    'num_rows': int(len(result.rows)),
                    'counts': dict(result.counts),
                    'rows': np.asarray(result.rows[:keep]).tolist(),
                    'scores': np.asarray(result.scores[:keep],
                                         np.float64).round(5).tolist()})
  trace = {'task_index': task_index, 'task': source.tasks[task_index].name,
           'task_domain': source.tasks[task_index].domain,
           'mode': source.cfg.mode,
           'corpus_dir': source.memory.corpus_dir,
           'queries': queries,
           'reference_rows': np.asarray(source.rows).tolist(),
           'stats': stats}
  out = path(root, task_index)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out + '.tmp', 'w') as f:
    json.dump(trace, f, indent=1, default=_jsonable)
  os.replace(out + '.tmp', out)
  return out
