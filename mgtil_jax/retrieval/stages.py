"""The multi-stage retrieval (docs/retrieval.md, "Multi-stage retrieval"),
one small pure function per stage, on host NumPy arrays of candidate corpus
rows.

1. `dense_cutoff`: k' = min(k, number of distinct scores); keep every
   candidate scoring at or above the k'-th largest distinct score (ties
   robust: identical captions score identically and stay together).
2. `visual_rerank`: S_v = CLIP image-text score of each candidate's image;
   candidates grouped by caption keep their top k_v images.
3. `bm25_gate`: if more than k remain, keep the BM25 top-k (query vs
   caption), then order by S_v.

Every ordering breaks ties by the smaller corpus row, so the output is a
deterministic function of the inputs.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def order_desc(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """Permutation sorting by score (descending), then row (ascending)."""
  return np.lexsort((np.asarray(rows), -np.asarray(scores, np.float64)))


def tie_groups(sorted_scores: np.ndarray, tol: float) -> np.ndarray:
  """Group ids (0 = best) of scores sorted descending: a group holds the
  scores within `tol` of its first (highest) score, so float noise between
  identical captions never splits a tie and a group never drifts wider than
  `tol` (no chaining of small gaps)."""
  s = np.asarray(sorted_scores, np.float64)
  groups = np.zeros(len(s), np.int64)
  if not len(s):
    return groups
  if tol <= 0:
    return np.concatenate([[0], np.cumsum(s[1:] != s[:-1])])
  g, top = 0, s[0]
  for i in range(1, len(s)):
    if s[i] < top - tol:
      g, top = g + 1, s[i]
    groups[i] = g
  return groups


def dense_cutoff(rows: np.ndarray, scores: np.ndarray, k: int,
                 tol: float = 0.0):
  """Stage 1 on candidate lists (any order; row -1 or a non-finite score =
  empty slot): (rows, scores) at or above the k'-th distinct score, best
  first."""
  rows = np.asarray(rows, np.int64)
  scores = np.asarray(scores, np.float32)
  valid = (rows >= 0) & np.isfinite(scores)
  rows, scores = rows[valid], scores[valid]
  if not len(rows) or k < 1:
    return rows[:0], scores[:0]
  order = order_desc(scores, rows)
  rows, scores = rows[order], scores[order]
  groups = tie_groups(scores, tol)
  k_prime = min(k, int(groups[-1]) + 1)
  keep = groups < k_prime
  return rows[keep], scores[keep]


def cutoff_is_settled(sorted_scores: np.ndarray, k: int, tol: float,
                      exhausted: bool) -> bool:
  """Whether a fetched best-first prefix of the ranking decides stage 1: the
  whole corpus was fetched, or the prefix reaches past the k'-th distinct
  score's tie group (so no entry beyond it can tie with the cutoff)."""
  if exhausted:
    return True
  groups = tie_groups(sorted_scores, tol)
  return bool(len(groups)) and int(groups[-1]) >= k


def visual_rerank(rows: np.ndarray, caption_groups: np.ndarray,
                  visual_scores: np.ndarray, k_v: int):
  """Stage 2: per caption (group key), the k_v candidates with the highest
  S_v; returns (rows, S_v) ordered by S_v."""
  rows = np.asarray(rows, np.int64)
  s_v = np.asarray(visual_scores, np.float32)
  groups = np.asarray(caption_groups)
  if not len(rows):
    return rows, s_v
  order = order_desc(s_v, rows)
  seen: dict = {}
  keep = np.zeros(len(rows), bool)
  for i in order:
    g = groups[i].item()
    if seen.get(g, 0) < k_v:
      seen[g] = seen.get(g, 0) + 1
      keep[i] = True
  kept = order[keep[order]]
  return rows[kept], s_v[kept]


def bm25_scores(query: str, captions: list[str], k1: float = 1.5,
                b: float = 0.75) -> np.ndarray:
  """BM25 (bm25s, Lucene variant) of `query` against each caption; the term
  statistics are those of the candidate captions."""
  import bm25s  # pylint: disable=g-import-not-at-top
  if not captions:
    return np.zeros(0, np.float32)
  corpus_tokens = bm25s.tokenize(list(captions), stopwords='en',
                                 show_progress=False)
  query_tokens = bm25s.tokenize([query], stopwords='en', return_ids=False,
                                show_progress=False)[0]
  query_tokens = [t for t in query_tokens if t in corpus_tokens.vocab]
  if not query_tokens or not corpus_tokens.vocab:
    return np.zeros(len(captions), np.float32)
  retriever = bm25s.BM25(k1=k1, b=b)
  retriever.index(corpus_tokens, show_progress=False)
  return np.asarray(retriever.get_scores(query_tokens), np.float32)


def bm25_gate(query: str, rows: np.ndarray, captions: list[str],
              visual_scores: np.ndarray, k: int, k1: float = 1.5,
              b: float = 0.75):
  """Stage 3: with more than k candidates, the BM25 top-k (ties at the
  boundary broken by S_v, then row); the result ordered by S_v."""
  rows = np.asarray(rows, np.int64)
  s_v = np.asarray(visual_scores, np.float32)
  if len(rows) > k:
    bm = bm25_scores(query, captions, k1, b)
    keep = np.lexsort((rows, -s_v.astype(np.float64), -bm.astype(np.float64)
                       ))[:k]
    rows, s_v = rows[keep], s_v[keep]
  order = order_desc(s_v, rows)
  return rows[order], s_v[order]


@dataclasses.dataclass
class Result:
  """One query's retrieval: corpus rows best first and their order score
  (S_v, or the dense score when the visual stage is off)."""
  query: str
  rows: np.ndarray      # int64[R]
  scores: np.ndarray    # float32[R]
  counts: dict          # candidates after each stage

  def top(self, n: int) -> np.ndarray:
    return self.rows[:n]


def run_stages(query: str, rows: np.ndarray, scores: np.ndarray, *, k: int,
               k_v: int, tol: float, visual_fn, groups_fn, captions_fn,
               visual: bool = True, bm25: bool = True, k1: float = 1.5,
               b: float = 0.75) -> Result:
  """Stages 1-3 for one query from its fetched candidates.

  visual_fn(rows) -> S_v float[R]; groups_fn(rows) -> caption keys [R];
  captions_fn(rows) -> list[str].
  """
  rows, scores = dense_cutoff(rows, scores, k, tol)
  counts = {'dense': int(len(rows))}
  if visual:
    s_v = np.asarray(visual_fn(rows), np.float32)
    rows, scores = visual_rerank(rows, groups_fn(rows), s_v, k_v)
    counts['visual'] = int(len(rows))
  if bm25:
    rows, scores = bm25_gate(query, rows, captions_fn(rows), scores, k, k1,
                             b)
    counts['bm25'] = int(len(rows))
  else:
    order = order_desc(scores, rows)
    rows, scores = rows[order], scores[order]
  return Result(query, rows, scores, counts)
