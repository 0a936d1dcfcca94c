"""Question pool, task-level queries, zero-shot domains, Dynamic Siphon
levels and quotas, PRIMED_uni, on hand-made inputs."""

import dataclasses
import json

import numpy as np
import pytest

from mgtil_jax.data import synth
from mgtil_jax.retrieval import queries, siphon, stages

T = 'A {modality} photo of {finding}.'


@dataclasses.dataclass
class _Task:
  name: str
  domain: str
  class_names: tuple


TASKS = [_Task('a', 'xray', ('nodule', 'mass')),
         _Task('b', 'xray', ('effusion',)),
         _Task('c', 'pathology', ('adenoma', 'carcinoma'))]
DESC = {'xray': ('chest x-ray',), 'pathology': ('histology slide',)}


def _pool():
  return [queries.Query(f'q{i}', d, 's', f'f{i}') for i, d in enumerate(
      ['xray', 'xray', 'pathology', 'fundus', 'fundus', 'general', 'xray',
       'pathology'])]


def test_task_queries_are_class_names_of_earlier_tasks():
  got = queries.task_queries(TASKS, 2, T, DESC)
  assert [q.text for q in got] == ['A chest x-ray photo of nodule.',
                                   'A chest x-ray photo of mass.',
                                   'A chest x-ray photo of effusion.']
  assert queries.task_queries(TASKS, 0, T, DESC) == []


def test_split_levels_are_disjoint_and_follow_the_earlier_domains():
  pool = _pool()
  domains = [q.domain for q in pool]
  task_level = queries.task_queries(TASKS, 2, T, DESC)
  lv = siphon.split_levels(2, TASKS, pool, domains, task_level, n=3, seed=1)
  assert [q.text for q in lv['task']] == [q.text for q in task_level]
  assert [q.text for q in lv['domain']] == ['q0', 'q1', 'q6']  # xray only
  rest = {'q2', 'q3', 'q4', 'q5', 'q7'}
  general = [q.text for q in lv['general']]
  assert len(general) == 3 and set(general) <= rest
  # Deterministic given (seed, task index); another task draws again.
  again = siphon.split_levels(2, TASKS, pool, domains, task_level, 3, 1)
  assert [q.text for q in again['general']] == general
  draws = {tuple(q.text for q in siphon.split_levels(
      2, TASKS, pool, domains, task_level, 3, s)['general']) for s in range(8)}
  assert len(draws) > 1
  # n larger than the rest: all of it. Task 0: no task or domain level.
  lv0 = siphon.split_levels(0, TASKS, pool, domains, [], n=99, seed=1)
  assert lv0['task'] == [] and lv0['domain'] == []
  assert len(lv0['general']) == len(pool)
  # Classified domains, not pool labels, decide the level.
  flipped = ['pathology'] * len(pool)
  lv = siphon.split_levels(2, TASKS, pool, flipped, task_level, 0, 1)
  assert lv['domain'] == []
  with pytest.raises(ValueError, match='domains for a pool'):
    siphon.split_levels(2, TASKS, pool, domains[:2], task_level, 1, 1)


def _result(text, rows):
  rows = np.asarray(rows, np.int64)
  return stages.Result(text, rows, -np.arange(len(rows), dtype=np.float32),
                       {})


def test_dynamic_siphon_quotas_union_and_cap():
  levels = {'task': [queries.Query('t1'), queries.Query('t2')],
            'domain': [queries.Query('d1')],
            'general': [queries.Query('g1')]}
  results = {'t1': _result('t1', [1, 2, 3, 4]), 't2': _result('t2', [3, 5]),
             'd1': _result('d1', [6, 1, 7]), 'g1': _result('g1', [8, 9])}
  plan = siphon.dynamic_siphon(levels, results,
                               {'task': 3, 'domain': 2, 'general': 1})
  # t1 -> 1,2,3; t2 -> 3,5 (3 seen); d1 -> 6,1 (1 seen); g1 -> 8.
  assert plan.rows.tolist() == [1, 2, 3, 5, 6, 8]
  assert plan.stats['kept'] == {'task': 5, 'domain': 2, 'general': 1}
  assert plan.stats['new'] == {'task': 4, 'domain': 1, 'general': 1}
  assert plan.stats['short_queries'] == {'task': 1, 'domain': 0,
                                         'general': 0}
  capped = siphon.dynamic_siphon(levels, results,
                                 {'task': 3, 'domain': 2, 'general': 1}, 3)
  assert capped.rows.tolist() == [1, 2, 3]
  empty = siphon.dynamic_siphon({'task': [], 'domain': [], 'general': []},
                                {}, {'task': 1, 'domain': 1, 'general': 1})
  assert empty.rows.size == 0 and empty.stats['size'] == 0


def test_uniform_equal_shares_to_a_fixed_size():
  results = {'ct': _result('ct', [1, 2, 3, 4]), 'mri': _result('mri', [2, 5]),
             'us': _result('us', [6, 7, 8])}
  plan = siphon.uniform(['ct', 'mri', 'us'], results, 6)
  # turn 1: 1, 2, 6; turn 2: ct skips 2 (taken) -> 3, mri 5, us 7
  assert plan.rows.tolist() == [1, 2, 6, 3, 5, 7]
  assert plan.stats['per_keyword'] == {'ct': 2, 'mri': 2, 'us': 2}
  # More than there is: everything, once.
  plan = siphon.uniform(['ct', 'mri', 'us'], results, 100)
  assert plan.rows.tolist() == [1, 2, 6, 3, 5, 7, 4, 8]
  assert plan.stats['per_keyword'] == {'ct': 3, 'mri': 2, 'us': 3}
  # Identical lists still share equally.
  same = {k: _result(k, [1, 2, 3, 4, 5, 6]) for k in ('a', 'b', 'c')}
  assert siphon.uniform(['a', 'b', 'c'], same, 5).stats['per_keyword'] == {
      'a': 2, 'b': 2, 'c': 1}


def test_load_pool_json_csv_and_nested(tmp_path):
  rows = [{'domain': 'xray', 'site': 'lung', 'finding': 'nodule'},
          {'domain': 'xray', 'site': 'lung', 'finding': 'mass',
           'modality': 'CT'},
          {'domain': 'skin', 'site': 'face', 'finding': 'melanoma',
           'query': 'Dermoscopy of a melanoma.'},
          {'domain': 'xray', 'site': 'lung', 'finding': 'nodule'}]  # repeat
  (tmp_path / 'p.json').write_text(json.dumps(rows))
  got = queries.load_pool(str(tmp_path / 'p.json'), T, DESC)
  assert [q.text for q in got] == ['A chest x-ray photo of nodule.',
                                   'A CT photo of mass.',
                                   'Dermoscopy of a melanoma.']
  assert got[0] == queries.Query('A chest x-ray photo of nodule.', 'xray',
                                 'lung', 'nodule')
  (tmp_path / 'p.csv').write_text('domain,site,finding\n'
                                  'pathology,colon,adenoma\n')
  got = queries.load_pool(str(tmp_path / 'p.csv'), T, DESC)
  assert got[0].text == 'A histology slide photo of adenoma.'
  (tmp_path / 'n.json').write_text(json.dumps(
      {'fundus': {'disc': ['glaucoma', 'papilledema']}}))
  got = queries.load_pool(str(tmp_path / 'n.json'), T, {})
  assert [q.text for q in got] == ['A fundus photo of glaucoma.',
                                   'A fundus photo of papilledema.']
  (tmp_path / 'bad.json').write_text(json.dumps([{'domain': 'xray'}]))
  with pytest.raises(ValueError, match=r"bad.json: row 0 lacks \['finding'\]"):
    queries.load_pool(str(tmp_path / 'bad.json'), T, {})
  with pytest.raises(FileNotFoundError, match='config.retrieval.pool'):
    queries.load_pool(str(tmp_path / 'none.json'), T, {})


def test_synth_pool_covers_every_finding_and_modality():
  pool = queries.synth_pool(T)
  findings = {c for t in synth.TASKS.values() for c in t.class_names}
  assert {q.finding for q in pool if q.domain != 'general'} == findings
  n_modal = sum(len(synth.DOMAINS[t.domain].modality) * len(t.class_names)
                for t in synth.TASKS.values())
  assert len(pool) == n_modal + len(synth.DISTRACTOR_CAPTIONS)
  assert 'A fundus photograph photo of glaucoma.' in {q.text for q in pool}


def test_zero_shot_domains_against_numpy():
  rng = np.random.default_rng(0)
  vocab = {}

  def text_fn(texts):  # a bag-of-words "text tower", L2-normalised
    out = []
    for t in texts:
      v = sum(vocab.setdefault(w, rng.normal(size=8)) for w in t.split())
      out.append(v / np.linalg.norm(v))
    return np.asarray(out)

  desc = {'xray': ('chest xray', 'radiograph'), 'skin': ('dermoscopy',)}
  templates = ('photo of {}', 'image of {}')
  texts = ['radiograph nodule', 'dermoscopy melanoma', 'chest xray mass']
  got = queries.zero_shot_domains(text_fn, texts, desc, templates)
  # Reference: class weights = normalised mean of prompt embeddings.
  def center(d):
    e = text_fn([t.format(p) for p in desc[d] for t in templates]).mean(0)
    return e / np.linalg.norm(e)
  names = sorted(desc)
  w = np.stack([center(d) for d in names])
  scores = text_fn(texts) @ w.T
  want = [names[i] for i in np.argmax(scores, 1)]
  assert got == want
  assert queries.zero_shot_domains(text_fn, [], desc, templates) == []
  got, margins = queries.zero_shot_domains(text_fn, texts, desc, templates,
                                           with_margins=True)
  assert got == want
  np.testing.assert_allclose(margins, np.abs(scores[:, 0] - scores[:, 1]),
                             rtol=1e-9)


def test_zero_shot_domains_ties_within_tolerance_keep_the_pool_label():
  # One phrase and template per domain: centres are the basis vectors, so a
  # query's domain scores are its own (normalised) coordinates.
  basis = {'a': [1., 0, 0], 'b': [0, 1., 0], 'c': [0, 0, 1.]}
  rows = {'q_near': [0.6, 0.6 + 5e-5, 0.1],  # a, b within 1e-4: a tie
          'q_far': [0.2, 0.9, 0.1]}         # b clearly

  def text_fn(texts):
    v = np.asarray([basis.get(t) or rows[t] for t in texts], np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)

  desc = {d: (d,) for d in basis}
  texts = ['q_near', 'q_far']
  s = text_fn(texts)  # the reference scores, coordinate by coordinate
  got = lambda **kw: queries.zero_shot_domains(text_fn, texts, desc, ('{}',),
                                               **kw)
  assert got() == ['b', 'b']                            # plain argmax
  assert got(tol=1e-4) == ['a', 'b']                    # tie -> first by name
  assert got(tol=1e-4, prior=['b', 'a']) == ['b', 'b']  # tie -> pool label
  assert got(tol=1e-4, prior=['c', 'c']) == ['a', 'b']  # label not tied
  _, m = got(tol=1e-4, with_margins=True)
  gap = s.max(1, keepdims=True) - s
  want = [min(abs(gap[i, j] - 1e-4) for j in range(3) if j != 1)
          for i in range(2)]
  np.testing.assert_allclose(m, want, rtol=1e-9)
  with pytest.raises(ValueError, match='prior'):
    got(prior=['a'])


@pytest.mark.parametrize('name', ['tie_tolerance', 'domain_tolerance'])
def test_bad_tolerance_names_the_field(name):
  from configs import retrieval as retrieval_cfg  # pylint: disable=g-import-not-at-top
  from mgtil_jax import retrieval  # pylint: disable=g-import-not-at-top
  cfg = retrieval_cfg.defaults()
  retrieval.validate_config(cfg)
  cfg[name] = -1e-4
  with pytest.raises(ValueError, match=f'config.retrieval.{name}'):
    retrieval.validate_config(cfg)
