"""The question pool M0 (domain -> site/lesion -> finding), task-level
queries from class names, and PRIMED_uni's domain keywords."""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os

from mgtil_jax.data import synth


@dataclasses.dataclass(frozen=True)
class Query:
  text: str
  domain: str = ''   # the pool's label ('' when unknown)
  site: str = ''     # anatomical site / lesion group
  finding: str = ''


# PRIMED_uni: about 30 fixed medical domain keywords (our list: the imaging
# modalities and specialties that PMC figure corpora cover).
MEDICAL_KEYWORDS = (
    'chest x-ray', 'radiograph', 'computed tomography', 'ct scan',
    'magnetic resonance imaging', 'mri', 'ultrasound', 'echocardiography',
    'mammography', 'angiography', 'pet scan', 'nuclear medicine',
    'histopathology', 'cytology', 'immunohistochemistry', 'h&e stain',
    'fundus photograph', 'optical coherence tomography', 'dermoscopy',
    'clinical photograph', 'endoscopy', 'colonoscopy', 'bronchoscopy',
    'laparoscopy', 'microscopy', 'electron microscopy', 'fluorescence',
    'bone marrow smear', 'blood smear', 'surgical specimen',
)

GENERAL_DOMAIN = 'general'

# The default medical pool (package data; docs/retrieval.md): used when a
# non-synthetic benchmark is given no pool=.
DEFAULT_POOL = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            'pools', 'medical_default.json')


@functools.lru_cache(maxsize=None)
def _pool_modalities(path: str) -> dict[str, tuple[str, ...]]:
  """domain -> modality phrases of a nested pool file ({} for row files)."""
  if path.lower().endswith('.csv'):
    return {}
  with open(path, encoding='utf-8') as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError:
      return {}  # load_pool names the file
  domains = data.get('domains') if isinstance(data, dict) else None
  if not isinstance(domains, dict):
    return {}
  out = {}
  for d, body in domains.items():
    phrases = body.get('modality') if isinstance(body, dict) else None
    if phrases:
      out[d] = (phrases,) if isinstance(phrases, str) else tuple(phrases)
  return out


def default_descriptions(domains) -> dict[str, tuple[str, ...]]:
  """Phrases describing each domain: the synthetic benchmark's modality
  phrases where known, else the default medical pool's, else the domain
  name itself."""
  medical = _pool_modalities(DEFAULT_POOL)
  out = {}
  for d in domains:
    if d in synth.DOMAINS:
      out[d] = tuple(synth.DOMAINS[d].modality)
    elif d == GENERAL_DOMAIN:
      out[d] = ('chart', 'table', 'diagram', 'flowchart')
    elif d in medical:
      out[d] = medical[d]
    else:
      out[d] = (d,)
  return out


def pool_descriptions(path: str) -> dict[str, tuple[str, ...]]:
  """The modality phrases a nested pool file gives its domains ({} for a
  row-per-query file)."""
  return dict(_pool_modalities(os.path.abspath(path)))


def synth_pool(template: str) -> list[Query]:
  """M0 of the embedded benchmark: every finding of every task under every
  modality phrase of its domain, plus general (non-imaging) queries."""
  out = []
  for task in synth.TASKS.values():
    for finding in task.class_names:
      for modality in synth.DOMAINS[task.domain].modality:
        out.append(Query(template.format(modality=modality, finding=finding),
                         task.domain, task.name, finding))
  for caption in synth.DISTRACTOR_CAPTIONS:
    out.append(Query(caption, GENERAL_DOMAIN, 'figure', caption))
  return out


def synth_keywords() -> tuple[str, ...]:
  phrases = [m for d in synth.DOMAINS.values() for m in d.modality]
  return tuple(phrases) + ('chart', 'table', 'diagram')


def load_pool(path: str, template: str,
              descriptions: dict[str, tuple[str, ...]] | None = None
              ) -> list[Query]:
  """A user pool: JSON (a list of objects) or CSV (header row) with columns
  domain, site, finding and optional modality, query. Without `query` the
  text is `template` filled with the modality (or the domain's first
  description) and the finding."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.retrieval.pool: {path} not found')
  if path.lower().endswith('.csv'):
    with open(path, newline='', encoding='utf-8') as f:
      rows = list(csv.DictReader(f))
  else:
    with open(path, encoding='utf-8') as f:
      try:
        rows = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f'config.retrieval.pool: {path} is not valid JSON '
                         f'({e})') from None
    if isinstance(rows, dict):
      rows = _nested_rows(rows, path)
  if not isinstance(rows, list) or not rows:
    raise ValueError(f'{path}: expected a non-empty list of rows with '
                     'domain, site, finding')
  descriptions = descriptions or {}
  out, seen = [], set()
  for i, row in enumerate(rows):
    if not isinstance(row, dict):
      raise ValueError(f'{path}: row {i} is not an object')
    missing = [c for c in ('domain', 'finding') if not str(
        row.get(c) or '').strip()]
    if missing and not str(row.get('query') or '').strip():
      raise ValueError(f'{path}: row {i} lacks {missing} (and has no query '
                       f'text); got {row}')
    domain = str(row.get('domain') or '').strip()
    finding = str(row.get('finding') or '').strip()
    text = str(row.get('query') or '').strip()
    if not text:
      modality = str(row.get('modality') or '').strip() or (
          descriptions.get(domain) or (domain,))[0]
      text = template.format(modality=modality, finding=finding)
    if text in seen:
      continue
    seen.add(text)
    out.append(Query(text, domain, str(row.get('site') or '').strip(),
                     finding))
  return out


def _nested_rows(data: dict, path: str) -> list[dict]:
  """Rows of a nested pool: {domain: {site: [finding, ...]}}, or
  {'domains': {domain: {'modality': [phrase, ...], 'sites': {site:
  [finding, ...]}}}} (the default pool's form; a row's modality is the
  domain's first phrase)."""
  if 'domains' in data:
    rows = []
    for d, body in (data['domains'] or {}).items():
      if not isinstance(body, dict) or not isinstance(body.get('sites'), dict):
        raise ValueError(f'{path}: domain {d!r} needs a "sites" object '
                         '{site: [finding, ...]}')
      phrases = body.get('modality') or ()
      modality = phrases if isinstance(phrases, str) else (
          phrases[0] if phrases else '')
      rows += [dict(domain=d, site=site, finding=x, modality=modality)
               for site, xs in body['sites'].items() for x in xs]
    return rows
  try:
    return [dict(domain=d, site=s, finding=x) for d, sites in data.items()
            for s, xs in sites.items() for x in xs]
  except AttributeError:
    raise ValueError(f'{path}: expected {{domain: {{site: [finding, ...]}}}}, '
                     'a "domains" object, or a list of rows') from None


def default_pool(template: str) -> list[Query]:
  """The packaged medical question pool (a few hundred rows over the
  common imaging modalities; docs/retrieval.md)."""
  return load_pool(DEFAULT_POOL, template)


def task_queries(tasks, upto: int, template: str,
                 descriptions: dict[str, tuple[str, ...]]) -> list[Query]:
  """M_task before task `upto`: the class names of tasks 0..upto-1, each as
  a query under its task's modality."""
  out, seen = [], set()
  for task in tasks[:upto]:
    modality = (descriptions.get(task.domain) or (task.domain,))[0]
    for name in task.class_names:
      q = Query(template.format(modality=modality, finding=name),
                task.domain, task.name, name)
      if q.text not in seen:
        seen.add(q.text)
        out.append(q)
  return out


def zero_shot_domains(text_fn, texts, descriptions: dict[str, tuple[str, ...]],
                      templates, with_margins: bool = False, tol: float = 0.0,
                      prior=None):
  """Zero-shot domain of each query text: the domain whose prompt embedding
  (normalised mean over its description phrases x prompt templates, CLIP's
  prompt ensembling) has the highest cosine with the query's embedding.

  text_fn(list[str]) -> float[N, E] L2-normalised text embeddings (the
  current model's text tower).

  tol: domains scoring within `tol` of the best are a tie, which the model
  cannot decide: the query keeps its `prior` domain (the pool's label) if
  that is among them, else the first tied domain by name. Float noise below
  `tol` (e.g. another summation order in training on more processes) then
  cannot change a call whose scores are that close (docs/retrieval.md).

  with_margins: also return, per text, how far a score would have to move to
  change the call: the smallest |best - score - tol| over the other domains
  (best minus second best when tol = 0; inf with one domain).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  domains = sorted(descriptions)
  if not domains:
    raise ValueError('zero-shot domains: no domain to choose from')
  if not texts:
    return ([], np.zeros(0)) if with_margins else []
  if prior is not None and len(prior) != len(texts):
    raise ValueError(f'zero-shot domains: {len(prior)} prior domains for '
                     f'{len(texts)} texts')
  prompts, owner = [], []
  for i, d in enumerate(domains):
    for phrase in descriptions[d]:
      for t in templates:
        prompts.append(t.format(phrase))
        owner.append(i)
  emb = np.asarray(text_fn(prompts), np.float64)
  owner = np.asarray(owner)
  centers = np.stack([emb[owner == i].mean(0) for i in range(len(domains))])
  centers /= np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12)
  q = np.asarray(text_fn(list(texts)), np.float64)
  scores = q @ centers.T
  gaps = scores.max(axis=1, keepdims=True) - scores   # 0 for the best
  tied = gaps <= tol
  index = {d: i for i, d in enumerate(domains)}
  out = []
  for n, row in enumerate(tied):
    j = index.get(prior[n]) if prior is not None else None
    out.append(domains[j] if j is not None and row[j] else
               domains[int(np.argmax(row))])
  if not with_margins:
    return out
  if len(domains) < 2:
    return out, np.full(len(out), np.inf)
  dist = np.abs(gaps - tol)
  dist[np.arange(len(gaps)), np.argmax(scores, axis=1)] = np.inf
  return out, dist.min(axis=1)
