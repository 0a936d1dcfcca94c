r"""What PRIMED's reference set is made of, task by task, against ZSCL's
(issue 23.5), from the synthetic corpus's own ground truth.

  python benchmarks/reference_makeup.py RUN_PRIMED [RUN_ZSCL] \
      [--out benchmarks/results/reference_makeup.json]

RUN_* are finished workdirs of the embedded benchmark (`configs/
mgtil_synth.py`). For each task t of PRIMED's run, the reference rows it
trained with (`retrieval/trace/task-t.json`) are looked up in the corpus
store by id and classified with the generator's labels
(`data/synth.make_corpus`: each figure's domain and finding):

  trained finding   a finding of a task trained so far (tasks 0..t)
  trained domain    another finding of a domain trained so far
  other domain      a figure of a domain not trained yet
  distractor        a chart / table figure (no domain)

and the same for ZSCL's reference (the whole corpus, every task). Beside
them: each loss term's share of the summed gradient norms over the task
(`train_curves[t]['grad_share']`, the mean over logged steps). Prints a
Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from mgtil_jax.data import synth  # pylint: disable=wrong-import-position
from mgtil_jax.retrieval import corpus as corpus_lib  # pylint: disable=wrong-import-position

KINDS = ('trained finding', 'trained domain', 'other domain', 'distractor')


def _load(path):
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def ground_truth(config: dict) -> tuple[list[str], list[str]]:
  """(domains, findings) of every synthetic corpus entry, by entry index
  (id synth-<index>), regenerated from the run's recorded config."""
  data = config['data']
  per_class = (config.get('retrieval', {}).get('synth_per_class') or
               config['pretrain']['corpus_per_class'])
  c = synth.make_corpus(int(per_class), data['image_size'], data['seed'],
                        regime=synth.get_regime(data['regime']))
  return list(c.domains), list(c.findings)


def classify(entry: int, domains, findings, trained_tasks) -> str:
  domain, finding = domains[entry], findings[entry]
  if not domain:
    return 'distractor'
  names = {c for t in trained_tasks for c in synth.TASKS[t].class_names}
  if finding in names:
    return 'trained finding'
  if domain in {synth.TASKS[t].domain for t in trained_tasks}:
    return 'trained domain'
  return 'other domain'


def makeup(entries, domains, findings, trained_tasks) -> dict:
  kinds = [classify(e, domains, findings, trained_tasks) for e in entries]
  n = max(len(kinds), 1)
  return dict(size=len(kinds), **{k: kinds.count(k) / n for k in KINDS})


def grad_shares(results: dict) -> list[dict]:
  out = []
  for curve in results['train_curves']:
    shares = curve.get('grad_share') or {}
    out.append({k: float(np.mean([v for _, v in pts])) if pts else None
                for k, pts in shares.items()})
  return out


def _short(path):
  if not path:
    return path
  parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
  return '/'.join(parts[-2:])


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('primed')
  p.add_argument('zscl', nargs='?')
  p.add_argument('--out', default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), 'results',
      'reference_makeup.json'))
  args = p.parse_args()
  res = _load(os.path.join(args.primed, 'results.json'))
  if res['benchmark'] != 'mgtil_synth':
    raise SystemExit(f'{args.primed}: a run of mgtil_synth is needed (its '
                     f'corpus has ground truth); got {res["benchmark"]!r}')
  domains, findings = ground_truth(res['config'])
  tasks = [t['name'] for t in res['tasks']]
  zscl = _load(os.path.join(args.zscl, 'results.json')) if args.zscl else None
  shares = grad_shares(res)
  zshares = grad_shares(zscl) if zscl else [{}] * len(tasks)
  rows = []
  for t, name in enumerate(tasks):
    trace = _load(os.path.join(args.primed, 'retrieval', 'trace',
                               f'task-{t}.json'))
    ids = corpus_lib.StringColumn(os.path.join(trace['corpus_dir'], 'ids'))
    entries = [int(ids[r].rsplit('-', 1)[1]) for r in trace['reference_rows']]
    trained = tasks[:t + 1]
    rows.append(dict(
        task=name, primed=makeup(entries, domains, findings, trained),
        zscl=makeup(range(len(domains)), domains, findings, trained),
        primed_grad_share=shares[t], zscl_grad_share=zshares[t]))
  print('| task | PRIMED ref size | trained finding / domain / other / '
        'distractor (PRIMED) | same for ZSCL (whole corpus) | PRIMED grad '
        'share | ZSCL grad share |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    cells = [' / '.join(f"{100 * r[m][k]:.0f}" for k in KINDS)
             for m in ('primed', 'zscl')]
    gs = [', '.join(f'{k} {v:.2f}' for k, v in sorted(g.items())
                    if v is not None) or '-'
          for g in (r['primed_grad_share'], r['zscl_grad_share'])]
    print(f"| {r['task']} | {r['primed']['size']} (ZSCL "
          f"{r['zscl']['size']}) | {cells[0]} | {cells[1]} | {gs[0]} | "
          f'{gs[1]} |')
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w', encoding='utf-8') as f:
    # The runs by their last two path parts (seed_S/method): an absolute
    # workdir means nothing on another machine.
    json.dump(dict(primed=_short(args.primed), zscl=_short(args.zscl),
                   rows=rows), f,
              indent=1)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
