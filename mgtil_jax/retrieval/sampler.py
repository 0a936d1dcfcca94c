"""Reference batches from the retrieval memory, and a background prefetcher.

`RetrievalReferenceSource` implements `mgtil_jax.data.reference.ReferenceSource`:
`prepare(task_index, teacher_params)` composes the task's reference set
(Dynamic Siphon or PRIMED_uni) and holds its decoded images and caption
tokens in host memory; `batch(task_index, step)` is a pure function of
(seed, task_index, step) over that set, so a resumed run sees the same
batches. `prefetch` runs `batch` + device placement on a host thread ahead
of the train step.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Callable, Iterable, Iterator

import numpy as np

from mgtil_jax.data import reference
from mgtil_jax.models import tokenizer as tokenizer_lib
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.retrieval import queries as queries_lib
from mgtil_jax.retrieval import siphon


class RetrievalReferenceSource:
  """PRIMED's reference sets, one per task.

  memory: a `memory.RetrievalMemory`; pool: M0 (list of queries.Query);
  descriptions: domain -> phrases; classify_fn(params, texts, domains,
  prior) -> list of domains, or (domains, margins) (zero-shot with the
  current model, queries.zero_shot_domains; prior = the pool's labels, kept
  on ties), used when cfg.domain_source == 'model'. token_bucket: each
  batch's captions are trimmed to its longest one, rounded up to this
  multiple (`tokenizer.trim_padding`; None keeps the tokenizer's width).
  """

  def __init__(self, memory, *, cfg, tasks, tokenizer, pool, descriptions,
               batch_size: int, seed: int, image_size: int,
               classify_fn: Callable | None = None,
               token_bucket: int | None = tokenizer_lib.DEFAULT_BUCKET):
    self.memory, self.cfg, self.tasks = memory, cfg, tasks
    self.tokenizer, self.pool = tokenizer, pool
    self.descriptions = descriptions
    self.batch_size, self.seed, self.image_size = batch_size, seed, image_size
    self.classify_fn = classify_fn
    self.token_bucket = token_bucket
    self.keywords = tuple(cfg.uni_keywords) or queries_lib.MEDICAL_KEYWORDS
    self.task_index = None
    self.domain_margin = None  # the closest zero-shot domain call
    self.rows = self.images = self.tokens = None
    self.stats = None

  # ---------------------------------------------------------- the queries --

  def uni_k(self) -> int:
    """Stage-1 depth for PRIMED_uni: enough for an equal share per keyword."""
    share = -(-self.cfg.reference_size // max(1, len(self.keywords)))
    return max(self.cfg.k, share)

  def known_queries(self) -> list[str]:
    """Every query text the run can ask (their vectors come from the
    initial model at task 0)."""
    if self.cfg.mode == 'uni':
      return list(self.keywords)
    texts = [q.text for q in self.pool]
    texts += [q.text for q in queries_lib.task_queries(
        self.tasks, len(self.tasks), self.cfg.query_template,
        self.descriptions)]
    return texts

  def pool_domains(self, params) -> list[str]:
    if self.cfg.domain_source == 'pool':
      return [q.domain for q in self.pool]
    if self.cfg.domain_source != 'model':
      raise ValueError(f"config.retrieval.domain_source: expected 'model' or "
                       f"'pool', got {self.cfg.domain_source!r}")
    if self.classify_fn is None:
      raise ValueError('retrieval: domain_source=model needs a classifier')
    out = self.classify_fn(params, [q.text for q in self.pool],
                           sorted(self.descriptions),
                           [q.domain for q in self.pool])
    if isinstance(out, tuple):
      out, margins = out
      self.domain_margin = float(np.min(margins)) if len(margins) else None
    return list(out)

  # ------------------------------------------------------------ interface --

  def prepare(self, task_index: int, teacher_params) -> dict:
    if not 0 <= task_index < len(self.tasks):
      raise ValueError(f'reference source: task_index {task_index} outside '
                       f'0..{len(self.tasks) - 1}')
    cfg = self.cfg
    self.memory.ensure(teacher_params, task_index, self.known_queries())
    if cfg.mode == 'uni':
      results = self.memory.retrieve(self.keywords, k=self.uni_k())
      plan = siphon.uniform(self.keywords, results, cfg.reference_size)
    elif cfg.mode == 'dyn':
      domains = self.pool_domains(teacher_params)
      task_level = queries_lib.task_queries(self.tasks, task_index,
                                            cfg.query_template,
                                            self.descriptions)
      levels = siphon.split_levels(task_index, self.tasks, self.pool,
                                   domains, task_level, cfg.n, self.seed)
      asked = [q for lv in siphon.LEVELS for q in levels[lv]]
      lexical = ({q.text: q.finding for q in asked if q.finding}
                 if cfg.bm25_query == 'finding' else None)
      results = self.memory.retrieve([q.text for q in asked],
                                     lexical=lexical)
      plan = siphon.dynamic_siphon(
          levels, results, {'task': cfg.a, 'domain': cfg.b, 'general': cfg.c},
          cfg.max_reference_size)
      plan.stats['domains'] = {d: domains.count(d) for d in sorted(set(
          domains))}
      plan.stats['earlier_domains'] = sorted({t.domain for t in
                                              self.tasks[:task_index]})
      if self.domain_margin is not None:
        # The closest zero-shot call: domains of later tasks come from the
        # trained teacher, equal across process counts only to float
        # rounding (docs/retrieval.md).
        plan.stats['domain_margin'] = self.domain_margin
    else:
      raise ValueError(f"config.retrieval.mode: expected 'dyn' or 'uni', got "
                       f'{cfg.mode!r}')
    if not len(plan.rows):
      raise ValueError(f'retrieval: the reference set of task {task_index} is '
                       f'empty ({plan.stats}); check the corpus and quotas')
    corpus = self.memory.corpus
    self.rows = plan.rows
    self.images = corpus.images(plan.rows, self.image_size,
                                cfg.decode_threads)
    self.tokens = self.tokenizer(corpus.captions.take(plan.rows))
    self.task_index = task_index
    counts = [r.counts for r in results.values()]
    stage_means = {s: float(np.mean([c[s] for c in counts if s in c]))
                   for s in ('dense', 'visual', 'bm25')
                   if any(s in c for c in counts)}
    self.stats = dict(plan.stats, mode=cfg.mode, task_index=task_index,
                      rows_sha256=hashlib.sha256(
                          plan.rows.tobytes()).hexdigest()[:16],
                      mean_candidates=stage_means,
                      memory=self.memory.describe())
    return self.stats

  def __len__(self):
    return 0 if self.rows is None else len(self.rows)

  def batch(self, task_index: int, step: int) -> dict:
    if task_index != self.task_index:
      raise RuntimeError(f'reference source: batch({task_index}, {step}) '
                         f'before prepare({task_index}, ...) (prepared: '
                         f'{self.task_index})')
    idx = tasks_lib.batch_indices(len(self.rows), self.batch_size, step,
                                  self.seed,
                                  stream=reference.REFERENCE_STREAM +
                                  task_index)
    tokens = tokenizer_lib.trim_padding(self.tokens[idx], self.token_bucket,
                                        getattr(self.tokenizer, 'pad_id', 0))
    return {'image': self.images[idx], 'tokens': tokens}


_DONE = object()


class _Failure:

  def __init__(self, exc: BaseException):
    self.exc = exc


def prefetch(source, task_index: int, steps: Iterable[int],
             place_fn: Callable[[dict], dict], depth: int = 2) -> Iterator:
  """Yields `place_fn(source.batch(task_index, s))` for s in `steps`, in
  order, computed up to `depth` batches ahead on a host thread.

  place_fn is usually `exp.put_batch` (the task batch's sharding). Errors in
  the thread are raised here; closing the generator (or leaving a `for` loop
  early) stops the thread.
  """
  if depth < 1:
    raise ValueError(f'prefetch depth: expected >= 1, got {depth}')
  slots: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        slots.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def work():
    try:
      for s in steps:
        if stop.is_set() or not put(place_fn(source.batch(task_index, s))):
          return
      put(_DONE)
    except BaseException as e:  # pylint: disable=broad-except
      put(_Failure(e))

  thread = threading.Thread(target=work, name='reference-prefetch',
                            daemon=True)
  thread.start()
  try:
    while True:
      item = slots.get()
      if item is _DONE:
        return
      if isinstance(item, _Failure):
        raise item.exc
      yield item
  finally:
    stop.set()
    thread.join()
