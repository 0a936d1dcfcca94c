"""mgtil_jax.retrieval.trace: a source's prepare() leaves a per-task trace
whose levels, quotas and rows match what the Siphon was given, and the
source's behaviour is unchanged."""

import json
import types

import ml_collections
import numpy as np

from mgtil_jax.retrieval import queries, siphon, stages, trace


class _Memory:
  corpus_dir = '/nowhere/corpus-x'

  def __init__(self):
    self.asked = []

  def retrieve(self, texts, k=None, lexical=None):
    del k, lexical
    self.asked.append(list(texts))
    # Query i retrieves rows 10 * i .. 10 * i + 11 (best first).
    return {t: stages.Result(t, np.arange(10 * i, 10 * i + 12),
                             np.linspace(1, 0, 12).astype(np.float32),
                             {'dense': 40, 'visual': 30, 'bm25': 12})
            for i, t in enumerate(texts)}


class _Source:
  """The part of sampler.RetrievalReferenceSource that trace reads; prepare
  asks the levels in siphon.LEVELS order, as the real one does."""

  def __init__(self):
    self.cfg = ml_collections.ConfigDict(dict(
        mode='dyn', a=3, b=2, c=1, k=12, query_template='{modality} {finding}'))
    self.tasks = [types.SimpleNamespace(name='t0', domain='xray',
                                        class_names=('nodule', 'mass')),
                  types.SimpleNamespace(name='t1', domain='path',
                                        class_names=('tumour',))]
    self.pool = [queries.Query('xray cavity', 'xray'),
                 queries.Query('path necrosis', 'path'),
                 queries.Query('flowchart', 'general')]
    self.descriptions = {'xray': ('xray',), 'path': ('path',)}
    self.memory = _Memory()
    self.stats = self.rows = None

  def prepare(self, task_index, teacher_params):
    del teacher_params
    levels = siphon.split_levels(
        task_index, self.tasks, self.pool, [q.domain for q in self.pool],
        queries.task_queries(self.tasks, task_index, self.cfg.query_template,
                             self.descriptions), n=1, seed=0)
    asked = [q for lv in siphon.LEVELS for q in levels[lv]]
    results = self.memory.retrieve([q.text for q in asked])
    plan = siphon.dynamic_siphon(levels, results, {'task': 3, 'domain': 2,
                                                   'general': 1})
    self.rows, self.stats = plan.rows, plan.stats
    return self.stats


def test_trace_records_levels_quotas_and_rows(tmp_path):
  plain = _Source()
  expected_stats = plain.prepare(1, None)
  source = trace.record(_Source(), str(tmp_path))
  stats = source.prepare(1, None)
  assert stats == expected_stats  # the wrapper changes nothing
  np.testing.assert_array_equal(source.rows, plain.rows)
  with open(trace.path(str(tmp_path), 1)) as f:
    t = json.load(f)
  assert t['task'] == 't1' and t['mode'] == 'dyn'
  assert t['corpus_dir'] == '/nowhere/corpus-x'
  assert t['reference_rows'] == plain.rows.tolist()
  # Task level: the 2 class names of task 0; domain level: the pool's xray
  # question (xray was seen); general: 1 of the other 2.
  levels = [q['level'] for q in t['queries']]
  assert levels == ['task', 'task', 'domain', 'general']
  assert [q['text'] for q in t['queries'][:3]] == [
      'xray nodule', 'xray mass', 'xray cavity']
  assert [q['domain'] for q in t['queries'][:3]] == ['xray'] * 3
  assert [q['quota'] for q in t['queries']] == [3, 3, 2, 1]
  # At least MIN_ROWS_PER_QUERY rows per query, best first, as retrieved.
  assert t['queries'][1]['rows'] == list(range(10, 10 + 8))
  assert t['queries'][0]['counts'] == {'dense': 40, 'visual': 30, 'bm25': 12}
  assert t['stats']['queries'] == {'task': 2, 'domain': 1, 'general': 1}
