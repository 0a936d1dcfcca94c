"""`mgtil_synth`: the embedded, procedurally generated MGTIL-style benchmark.

Three imaging domains that differ strongly in appearance (grayscale chest
radiographs, pink H&E-like histology, orange fundus photographs), each with
three tasks of fine-grained findings that differ in shape, count, size,
position, colour or texture. Class names are clinical words, so a CLIP model
can classify them zero-shot from prompts. A "literature" corpus of
image-caption pairs (captions such as "A fundus photograph of exudates.")
plus distractor figures (charts, tables) lets a tiny CLIP be pretrained so
that it starts above chance.

How the corpus relates to the tasks is a `Regime` (config.data.regime).
'mgtil' (the default) puts each task at its own site (a tone shift) and
pools the corpus's figures from many sites (`corpus_sites`), covering the
findings unevenly with noisy captions: zero-shot starts far below what
fine-tuning reaches (benchmarks/RESULTS.md, "The MGTIL regime";
docs/datasets.md). 'many_sites' is the same without the uneven coverage.
'same_scanner' renders corpus and tasks alike, so zero-shot is already
strong. In the three regimes below, the corpus comes from one neutral
scanner: the pretrained image features collapse on the shifted task images
and fine-tuning does not learn tasks it starts at chance on.
'new_site' keeps same_scanner's corpus and shifts only the task images'
tone; 'literature' names findings unevenly (`SYNONYMS`, partial coverage);
'shifted' carries knowledge of the findings the way real literature does:
- acquisition shift: every task's images pass through their own scanner
  (gamma, colour cast, blur, zoom, noise; `acquisition`), the corpus's
  textbook figures through a neutral one;
- partial coverage: within each task one finding is well covered, one less
  and the others rarely (`coverage`);
- noisy captions: some name only the modality, a few a wrong finding of the
  same domain;
- subtle cases: a share of task images shows its finding barely visible,
  which bounds single-task accuracy below 100%; the corpus shows clear cases.

Everything is a deterministic function of (seed, name): nothing is
downloaded. Images are uint8[N, S, S, 3].
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Callable, Sequence

import numpy as np

# Bumped whenever the generator's output changes; part of the data caches'
# keys (mgtil_jax/data/tasks.py), so a cache of an older generator is rebuilt.
# 2: regimes ('same_scanner' renders as version 1 did).
VERSION = 2

# ----------------------------------------------------------------- drawing --


class Canvas:
  """A float RGB image in [0, 1] with soft (anti-aliased) primitives."""

  def __init__(self, size: int, rgb):
    self.size = size
    self.img = np.empty((size, size, 3), np.float32)
    self.img[:] = np.asarray(rgb, np.float32)
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    self.yy, self.xx = np.meshgrid(c, c, indexing='ij')
    self.px = 1.0 / size

  def _soft(self, signed_dist):
    """Coverage from a signed distance (negative inside), 1 pixel ramp."""
    return np.clip(0.5 - signed_dist / self.px, 0.0, 1.0)

  def paint(self, mask, rgb, alpha=1.0):
    mask = (mask * alpha)[..., None]
    self.img = self.img * (1 - mask) + np.asarray(rgb, np.float32) * mask

  def add(self, mask, delta):
    self.img = self.img + mask[..., None] * np.asarray(delta, np.float32)

  def ellipse(self, cx, cy, rx, ry):
    d = np.sqrt(((self.xx - cx) / rx) ** 2 + ((self.yy - cy) / ry) ** 2)
    return self._soft((d - 1.0) * min(rx, ry))

  def disc(self, cx, cy, r):
    return self.ellipse(cx, cy, r, r)

  def ring(self, cx, cy, r, width):
    d = np.sqrt((self.xx - cx) ** 2 + (self.yy - cy) ** 2)
    return self._soft(np.abs(d - r) - width / 2)

  def segment(self, x0, y0, x1, y1, width):
    px, py = self.xx - x0, self.yy - y0
    dx, dy = x1 - x0, y1 - y0
    t = np.clip((px * dx + py * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
    d = np.sqrt((px - t * dx) ** 2 + (py - t * dy) ** 2)
    return self._soft(d - width / 2)

  def polyline(self, pts, width):
    m = np.zeros_like(self.xx)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
      m = np.maximum(m, self.segment(x0, y0, x1, y1, width))
    return m

  def to_uint8(self):
    return (np.clip(self.img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _smooth_noise(rng, size, cells=6):
  """Low-frequency noise in [-1, 1] by bilinear upsampling of a coarse grid."""
  g = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
  c = np.linspace(0, cells, size, dtype=np.float32)
  i = np.minimum(c.astype(int), cells - 1)
  f = c - i
  rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]
  return rows[:, i] * (1 - f)[None] + rows[:, i + 1] * f[None]


# ----------------------------------------------------------------- domains --
# A domain draws its background and returns a context dict with the
# geometry that findings use (lung boxes, optic disc position, ...).


def _xray_background(cv: Canvas, rng):
  cv.img[:] = rng.uniform(0.45, 0.6)
  cv.add(_smooth_noise(rng, cv.size, 4), 0.05)
  dx = rng.uniform(-0.03, 0.03)
  lungs = [(0.3 + dx, 0.48), (0.7 + dx, 0.48)]
  lung_mask = np.zeros_like(cv.xx)
  for cx, cy in lungs:
    lung_mask = np.maximum(lung_mask, cv.ellipse(cx, cy, 0.17, 0.32))
  cv.paint(lung_mask, [0.18] * 3)
  ribs = 0.5 + 0.5 * np.sin(cv.yy * 2 * np.pi * 5 + rng.uniform(0, 6.3))
  cv.add(lung_mask * ribs, 0.08)
  heart = cv.ellipse(0.5 + dx, 0.66, 0.1, 0.11)
  cv.paint(heart, [0.62] * 3, 0.8)
  return {'lungs': lungs, 'lung_mask': lung_mask, 'dx': dx}


def _in_lung(ctx, rng, margin=0.0):
  cx, cy = ctx['lungs'][rng.integers(2)]
  a = rng.uniform(0, 2 * np.pi)
  r = np.sqrt(rng.uniform(0, 1)) * (1 - margin)
  return cx + 0.11 * r * np.cos(a), cy + 0.24 * r * np.sin(a)


def _pathology_background(cv: Canvas, rng):
  pink = np.array([0.93, 0.72, 0.80]) + rng.uniform(-0.05, 0.05, 3)
  cv.img[:] = pink
  cv.add(_smooth_noise(rng, cv.size, 5), [0.04, 0.06, 0.04])
  for _ in range(rng.integers(3, 7)):
    cv.paint(cv.disc(*rng.uniform(0.05, 0.95, 2), 0.025), [0.5, 0.3, 0.62])
  return {'pink': pink}


def _fundus_background(cv: Canvas, rng):
  cv.img[:] = 0.02
  base = np.array([0.82, 0.38, 0.16]) + rng.uniform(-0.06, 0.06, 3)
  r = np.sqrt((cv.xx - 0.5) ** 2 + (cv.yy - 0.5) ** 2)
  shade = np.clip(1.0 - 0.7 * (r / 0.47) ** 2, 0.3, 1.0)
  retina = cv.disc(0.5, 0.5, 0.47)
  cv.img = cv.img * (1 - retina[..., None]) + (
      base[None, None] * shade[..., None]) * retina[..., None]
  side = rng.choice([0.3, 0.7])
  od = (side + rng.uniform(-0.03, 0.03), 0.5 + rng.uniform(-0.05, 0.05))
  for k in range(4):
    ang = (k - 1.5) * 0.9 + (0 if side < 0.5 else np.pi)
    pts = [od]
    x, y = od
    for _ in range(4):
      ang += rng.uniform(-0.3, 0.3)
      x, y = x + 0.1 * np.cos(ang), y + 0.1 * np.sin(ang)
      pts.append((x, y))
    cv.paint(cv.polyline(pts, 0.02) * retina, [0.6, 0.15, 0.08], 0.6)
  return {'od': od, 'retina': retina, 'side': side}


def _retina_point(ctx, rng, rmax=0.36):
  a = rng.uniform(0, 2 * np.pi)
  r = np.sqrt(rng.uniform(0.05, 1)) * rmax
  return 0.5 + r * np.cos(a), 0.5 + r * np.sin(a)


@dataclasses.dataclass(frozen=True)
class Domain:
  name: str
  background: Callable
  modality: Sequence[str]  # phrases used in captions and queries


DOMAINS = {
    'xray': Domain('xray', _xray_background,
                   ('chest radiograph', 'chest x-ray', 'radiograph')),
    'pathology': Domain('pathology', _pathology_background,
                        ('histopathology slide', 'h&e stained section',
                         'histology image')),
    'fundus': Domain('fundus', _fundus_background,
                     ('fundus photograph', 'retinal photograph',
                      'fundus image')),
}

# ---------------------------------------------------------------- findings --
# Each finding draws onto a canvas given the domain context.


def _nodule(cv, ctx, rng):
  cv.add(cv.disc(*_in_lung(ctx, rng, 0.4), 0.055), 0.5)


def _mass(cv, ctx, rng):
  cv.add(cv.disc(*_in_lung(ctx, rng, 0.6), 0.12), 0.4)


def _cavity(cv, ctx, rng):
  cv.add(cv.ring(*_in_lung(ctx, rng, 0.5), 0.085, 0.035), 0.55)


def _fibrosis(cv, ctx, rng):
  for _ in range(4):
    x, y = _in_lung(ctx, rng, 0.3)
    a = rng.uniform(0, np.pi)
    cv.add(cv.segment(x, y, x + 0.14 * np.cos(a), y + 0.14 * np.sin(a),
                      0.03), 0.4)


def _granuloma(cv, ctx, rng):
  cv.add(cv.disc(*_in_lung(ctx, rng, 0.4), 0.04), 0.75)


def _metastases(cv, ctx, rng):
  for _ in range(rng.integers(4, 7)):
    cv.add(cv.disc(*_in_lung(ctx, rng, 0.2), 0.05), 0.4)


def _miliary(cv, ctx, rng):
  m = np.zeros_like(cv.xx)
  for _ in range(rng.integers(25, 40)):
    m = np.maximum(m, cv.disc(*_in_lung(ctx, rng), 0.03))
  cv.add(m * ctx['lung_mask'], 0.3)


def _pneumothorax(cv, ctx, rng):
  left = rng.integers(2)
  cx, cy = ctx['lungs'][left]
  edge = cx + (-0.06 if left == 0 else 0.06)
  side = (cv.xx < edge) if left == 0 else (cv.xx > edge)
  m = cv.ellipse(cx, cy, 0.17, 0.32) * side * (cv.yy < cy + 0.1)
  cv.paint(m, [0.02] * 3)


def _effusion(cv, ctx, rng):
  cx, cy = ctx['lungs'][rng.integers(2)]
  level = cy + rng.uniform(0.02, 0.12)
  m = cv.ellipse(cx, cy, 0.18, 0.33) * cv._soft(level - cv.yy)
  cv.paint(m, [0.78] * 3)


def _cardiomegaly(cv, ctx, rng):
  cv.paint(cv.ellipse(0.5 + ctx['dx'], 0.64, 0.22, 0.18), [0.7] * 3)


def _nuclei(cv, rng, n, r, rgb, jitter=0.0):
  for _ in range(n):
    rr = r * (1 + rng.uniform(-jitter, jitter))
    cv.paint(cv.disc(*rng.uniform(0.04, 0.96, 2), rr), rgb)


def _normal_mucosa(cv, ctx, rng):
  for row in range(3):  # orderly crypts of small nuclei
    y = 0.2 + 0.3 * row + rng.uniform(-0.03, 0.03)
    for col in range(5):
      cv.paint(cv.disc(0.1 + 0.2 * col + rng.uniform(-0.02, 0.02), y, 0.03),
               [0.45, 0.25, 0.6])


def _adenoma(cv, ctx, rng):
  _nuclei(cv, rng, rng.integers(18, 26), 0.04, [0.4, 0.2, 0.55])


def _carcinoma(cv, ctx, rng):
  _nuclei(cv, rng, rng.integers(30, 40), 0.06, [0.22, 0.08, 0.35], 0.4)


def _glands(cv, ctx, rng):
  for _ in range(rng.integers(2, 4)):
    x, y = rng.uniform(0.2, 0.8, 2)
    cv.paint(cv.disc(x, y, 0.11), [0.5, 0.28, 0.62])
    cv.paint(cv.disc(x, y, 0.07), [0.98, 0.95, 0.97])


def _stroma(cv, ctx, rng):
  a = rng.uniform(0, np.pi)
  phase = cv.xx * np.cos(a) + cv.yy * np.sin(a)
  stripes = (np.sin(phase * 2 * np.pi * 6) > 0.3).astype(np.float32)
  cv.paint(stripes, [0.85, 0.35, 0.5], 0.8)


def _necrosis(cv, ctx, rng):
  for _ in range(2):
    cv.paint(cv.ellipse(*rng.uniform(0.25, 0.75, 2), 0.22, 0.16),
             [0.9, 0.88, 0.9])
  _nuclei(cv, rng, 10, 0.015, [0.4, 0.3, 0.45])


def _lymphocytes(cv, ctx, rng):
  cx, cy = rng.uniform(0.3, 0.7, 2)
  for _ in range(45):
    x, y = cx + rng.normal(0, 0.13), cy + rng.normal(0, 0.13)
    cv.paint(cv.disc(x, y, 0.03), [0.15, 0.05, 0.3])


def _mucin(cv, ctx, rng):
  for _ in range(rng.integers(2, 4)):
    cv.paint(cv.ellipse(*rng.uniform(0.2, 0.8, 2), *rng.uniform(0.1, 0.2, 2)),
             [0.6, 0.72, 0.92], 0.9)


def _hemorrhage_tissue(cv, ctx, rng):
  _nuclei(cv, rng, rng.integers(25, 35), 0.035, [0.92, 0.08, 0.12])


def _adipose(cv, ctx, rng):
  for _ in range(rng.integers(4, 7)):
    x, y = rng.uniform(0.1, 0.9, 2)
    cv.paint(cv.disc(x, y, 0.14), [0.8, 0.45, 0.6])
    cv.paint(cv.disc(x, y, 0.12), [0.99, 0.98, 0.98])


def _healthy_retina(cv, ctx, rng):
  del cv, ctx, rng


def _microaneurysms(cv, ctx, rng):
  for _ in range(rng.integers(8, 13)):
    cv.paint(cv.disc(*_retina_point(ctx, rng), 0.035), [0.3, 0.0, 0.0])


def _hemorrhages(cv, ctx, rng):
  for _ in range(rng.integers(2, 4)):
    cv.paint(cv.ellipse(*_retina_point(ctx, rng), 0.1, 0.075),
             [0.25, 0.0, 0.0])


def _exudates(cv, ctx, rng):
  for _ in range(rng.integers(8, 14)):
    cv.paint(cv.disc(*_retina_point(ctx, rng), 0.04), [1.0, 0.95, 0.45])


def _optic_disc(cv, ctx, r):
  cv.paint(cv.disc(*ctx['od'], r), [1.0, 0.88, 0.55], 0.9)


def _normal_disc(cv, ctx, rng):
  _optic_disc(cv, ctx, 0.12)
  cv.paint(cv.disc(*ctx['od'], 0.04), [1.0, 1.0, 0.9])


def _glaucoma(cv, ctx, rng):
  _optic_disc(cv, ctx, 0.12)
  cv.paint(cv.disc(*ctx['od'], 0.1), [1.0, 1.0, 1.0])


def _papilledema(cv, ctx, rng):
  cv.paint(cv.disc(*ctx['od'], 0.24), [0.95, 0.75, 0.5], 0.6)
  _optic_disc(cv, ctx, 0.17)


def _ridge(cv, ctx, rng):
  a0 = rng.uniform(0, 2 * np.pi)
  pts = [(0.5 + 0.36 * np.cos(a0 + t), 0.5 + 0.36 * np.sin(a0 + t))
         for t in np.linspace(0, 1.6, 8)]
  cv.paint(cv.polyline(pts, 0.04), [1.0, 0.97, 0.9])


def _neovascularization(cv, ctx, rng):
  x, y = _retina_point(ctx, rng, 0.25)
  for _ in range(6):
    pts = [(x, y)]
    for _ in range(4):
      pts.append((pts[-1][0] + rng.normal(0, 0.06),
                  pts[-1][1] + rng.normal(0, 0.06)))
    cv.paint(cv.polyline(pts, 0.02), [0.6, 0.0, 0.05])


def _detachment(cv, ctx, rng):
  a = rng.uniform(0, 2 * np.pi)
  wave = 0.04 * np.sin(12 * (cv.xx * np.sin(a) - cv.yy * np.cos(a)))
  side = (cv.xx - 0.5) * np.cos(a) + (cv.yy - 0.5) * np.sin(a) + wave
  cv.paint(cv._soft(0.1 - side) * ctx['retina'], [0.62, 0.6, 0.55], 0.9)


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  domain: str
  class_names: tuple[str, ...]
  draw: tuple[Callable, ...]


TASKS = {
    t.name: t for t in [
        Task('xray_lesion', 'xray', ('nodule', 'mass', 'cavity', 'fibrosis'),
             (_nodule, _mass, _cavity, _fibrosis)),
        Task('xray_pattern', 'xray',
             ('granuloma', 'metastases', 'miliary pattern'),
             (_granuloma, _metastases, _miliary)),
        Task('xray_region', 'xray',
             ('pneumothorax', 'pleural effusion', 'cardiomegaly'),
             (_pneumothorax, _effusion, _cardiomegaly)),
        Task('path_grade', 'pathology',
             ('normal mucosa', 'adenoma', 'carcinoma'),
             (_normal_mucosa, _adenoma, _carcinoma)),
        Task('path_tissue', 'pathology',
             ('glands', 'stroma', 'necrosis', 'lymphocytes'),
             (_glands, _stroma, _necrosis, _lymphocytes)),
        Task('path_stain', 'pathology', ('mucin', 'haemorrhage', 'adipose'),
             (_mucin, _hemorrhage_tissue, _adipose)),
        Task('fundus_dr', 'fundus',
             ('healthy retina', 'microaneurysms', 'retinal hemorrhages',
              'hard exudates'),
             (_healthy_retina, _microaneurysms, _hemorrhages, _exudates)),
        Task('fundus_disc', 'fundus',
             ('normal optic disc', 'glaucoma', 'papilledema'),
             (_normal_disc, _glaucoma, _papilledema)),
        Task('fundus_rop', 'fundus',
             ('demarcation ridge', 'neovascularization', 'retinal detachment'),
             (_ridge, _neovascularization, _detachment)),
    ]
}

# The literature's own term for each finding, where a dataset's class name
# is another (a regime's `renamed` decides how often the corpus uses it). No
# synonym shares a word with its class name.
SYNONYMS = {
    'nodule': 'coin lesion', 'mass': 'tumour', 'cavity': 'cavitation',
    'fibrosis': 'scarring', 'granuloma': 'tuberculoma',
    'metastases': 'secondary deposits',
    'miliary pattern': 'disseminated nodularity',
    'pneumothorax': 'collapsed lung', 'pleural effusion': 'hydrothorax',
    'cardiomegaly': 'enlarged heart', 'normal mucosa': 'benign epithelium',
    'adenoma': 'polyp', 'carcinoma': 'malignancy', 'glands': 'acini',
    'stroma': 'connective tissue', 'necrosis': 'cell death',
    'lymphocytes': 'immune infiltrate', 'mucin': 'mucus',
    'haemorrhage': 'bleeding', 'adipose': 'fat',
    'healthy retina': 'no retinopathy', 'microaneurysms': 'red dots',
    'retinal hemorrhages': 'blot haemorrhages',
    'hard exudates': 'lipid deposits',
    'normal optic disc': 'physiological cup', 'glaucoma': 'cupping',
    'papilledema': 'swollen nerve head', 'demarcation ridge': 'white line',
    'neovascularization': 'new vessels',
    'retinal detachment': 'detached retina',
}

# Order I groups tasks by domain (like HieraMedTransfer order I); order II is
# alphabetical (like its order II).
ORDERS = {
    'domain': tuple(TASKS),
    'alphabetical': tuple(sorted(TASKS)),
}


def _rng(seed: int, *names) -> np.random.Generator:
  """A generator keyed by the seed and names, stable across Python runs."""
  key = [int(seed)] + [zlib.crc32(str(n).encode()) for n in names]
  return np.random.default_rng(key)


# ------------------------------------------------------------ acquisition --
# Each task's images come from their own "scanner"; the corpus's figures from
# a neutral one. The shift is what a model pretrained on the literature meets
# at a new site, and what fine-tuning on one task adapts to (and away from).


@dataclasses.dataclass(frozen=True)
class Acquisition:
  gamma: float = 1.0
  gain: tuple[float, float, float] = (1.0, 1.0, 1.0)  # colour cast
  offset: float = 0.0
  blur: float = 0.0        # Gaussian sigma, in units of the image side
  zoom: float = 1.0        # > 1 magnifies about the centre
  noise: float = 0.025     # per-pixel Gaussian sigma

  def apply(self, img: np.ndarray, rng) -> np.ndarray:
    from scipy import ndimage  # pylint: disable=g-import-not-at-top
    size = img.shape[0]
    if self.zoom != 1.0:
      c = (size - 1) / 2
      scale = 1.0 / self.zoom
      img = np.stack([ndimage.affine_transform(
          img[..., k], np.diag([scale, scale]),
          offset=c - scale * c, order=1, mode='nearest')
                      for k in range(3)], -1)
    if self.blur > 0:
      img = ndimage.gaussian_filter(img, (self.blur * size, self.blur * size,
                                          0), mode='nearest')
    if (self.gamma, self.gain, self.offset) != (1.0, (1.0, 1.0, 1.0), 0.0):
      img = np.clip(img, 0, 1) ** self.gamma
      img = img * np.asarray(self.gain, np.float32) + self.offset
    noise = rng.normal(0, self.noise, img.shape[:2]).astype(np.float32)
    img = img + noise[..., None]
    return img


NEUTRAL = Acquisition()


def _scanner(rng, grayscale: bool, shift: float, optics: float
             ) -> Acquisition:
  """A scanner drawn from `rng`: tone (gamma, colour cast, offset) at
  distance `shift` from the neutral one, blur / zoom / noise at `optics`."""
  gain = rng.uniform(0.7, 1.25, 3)
  if grayscale:  # radiographs stay grayscale
    gain[:] = gain.mean()
  gamma = rng.uniform(np.log(0.55), np.log(1.8))
  offset = rng.uniform(-0.08, 0.08)
  blur = rng.uniform(0.0, 0.025)
  zoom = rng.uniform(0.85, 1.2)
  noise = rng.uniform(0.04, 0.08)
  return Acquisition(
      gamma=float(np.exp(shift * gamma)),
      gain=tuple(float(1 + shift * (g - 1)) for g in gain),
      offset=float(shift * offset),
      blur=float(optics * blur),
      zoom=float(1 + optics * (zoom - 1)),
      noise=float(NEUTRAL.noise + optics * (noise - NEUTRAL.noise)))


def acquisition(task_name: str, shift: float = 1.0,
                optics: float | None = None) -> Acquisition:
  """The task's scanner: a deterministic function of the task's name alone
  (a dataset keeps its site whatever the benchmark's seed); `shift` scales
  its distance from the neutral scanner in tone (gamma, colour cast,
  offset; 0 = the corpus's own) and `optics` (default `shift`) in blur, zoom
  and noise."""
  optics = shift if optics is None else optics
  return _scanner(_rng(0, 'acquisition', task_name),
                  TASKS[task_name].domain == 'xray', shift, optics)


@dataclasses.dataclass(frozen=True)
class Regime:
  """How the literature relates to the tasks (config.data.regime)."""
  shift: float = 0.0  # tone shift of the task images (`acquisition`)
  optics: float | None = None  # blur / zoom / noise shift (None = `shift`)
  # Share of task images whose finding is subtle (severity in [0, 0.3);
  # the rest [0.6, 1]); the corpus always shows clear cases.
  subtle_fraction: float = 0.0
  # Corpus share of a task's findings by rank: one finding gets the first
  # level, one the second, the others the last (`coverage`).
  coverage: tuple[float, ...] = (1.0,)
  uninformative: float = 0.0  # captions that name no finding
  mislabelled: float = 0.0    # captions that name another finding
  # Share of a finding's captions that call it by the literature's term
  # (`SYNONYMS`) instead of the dataset's class name, by rank within a task
  # as for `coverage` (`renamed`); () = never.
  renamed: tuple[float, ...] = ()
  distractors: float = 0.15   # share of chart / table figures
  # How far the corpus's figures stray from the neutral scanner: each figure
  # through its own random scanner (`_scanner`) of this strength
  # (0 = every figure from the neutral one). The literature pools figures
  # from countless sites; a model pretrained on one scanner's figures has
  # features that collapse under a new site's tone (docs/datasets.md).
  corpus_sites: float = 0.0


REGIMES = {
    # Corpus and tasks from one renderer: zero-shot is already strong.
    'same_scanner': Regime(),
    # Every task through its own scanner, subtle cases, partial coverage and
    # noisy captions. This, new_site and literature are opt-in: their corpus
    # comes from one neutral scanner, so the pretrained features collapse on
    # the shifted task images and fine-tuning does not learn them
    # (benchmarks/RESULTS.md, "The MGTIL regime").
    'shifted': Regime(shift=1.0, subtle_fraction=0.2,
                      coverage=(1.0, 0.5, 0.25), uninformative=0.15,
                      mislabelled=0.05, distractors=0.25),
    # A new site: the corpus of same_scanner (every finding, clear cases,
    # clean captions), the task images through their own scanner's tone
    # (gamma, colour cast, offset; same optics), a share of them subtle.
    'new_site': Regime(shift=1.0, optics=0.0, subtle_fraction=0.1),
    # The literature names findings unevenly: partial coverage, noisy
    # captions, and in each task one finding called only by its literature
    # term (`SYNONYMS`) and one half the time; task images as the corpus's,
    # a share of them subtle.
    'literature': Regime(subtle_fraction=0.1, coverage=(1.0, 0.6, 0.3),
                         uninformative=0.1, mislabelled=0.05,
                         distractors=0.25, renamed=(1.0, 0.5, 0.0)),
    # new_site's tasks, a corpus whose figures come from many sites.
    'many_sites': Regime(shift=1.0, optics=0.0, subtle_fraction=0.1,
                         corpus_sites=1.0),
    # The previous default: many_sites with the literature's uneven
    # knowledge of the findings: partial coverage, noisy captions and more
    # distractors. At 500 steps per task: zero-shot 52.1, single-task 89.2,
    # joint 86.7, ft Last 39.5 / BWT -52.7, below zero-shot
    # (benchmarks/RESULTS.md section 1).
    'mgtil': Regime(shift=1.0, optics=0.0, subtle_fraction=0.1,
                    corpus_sites=1.0, coverage=(1.0, 0.6, 0.3),
                    uninformative=0.1, mislabelled=0.05, distractors=0.25),
    # The default (configs/mgtil_synth.py, with 360 corpus pairs per
    # finding): a start with features but weak prompts (issue 23.2):
    # mgtil's tasks and noisy captions, a literature that shows every
    # finding fully but names it by its literature term (`SYNONYMS`) for all,
    # 70 % and 40 % of a task's findings by rank (benchmarks/RESULTS.md
    # section 1).
    'mgtil_synonyms': Regime(shift=1.0, optics=0.0, subtle_fraction=0.1,
                             corpus_sites=1.0, coverage=(1.0,),
                             uninformative=0.1, mislabelled=0.05,
                             distractors=0.25, renamed=(1.0, 0.7, 0.4)),
}


CORPUS_FIELDS = ('coverage', 'uninformative', 'mislabelled', 'renamed',
                 'distractors', 'corpus_sites')


def corpus_regime(name: str) -> str:
  """The first regime (in REGIMES order) whose corpus is `name`'s: regimes
  that differ only in their task images share one corpus, so one pretrained
  model (the pretraining cache is keyed by this name, configs/
  mgtil_synth.py)."""
  mine = get_regime(name)
  for other, r in REGIMES.items():
    if all(getattr(r, f) == getattr(mine, f) for f in CORPUS_FIELDS):
      return other
  return name


def corpus_spec(name: str) -> dict:
  """What the corpus of regime `name` is made from (its corpus fields and
  the renderer's VERSION): part of the pretraining cache's key."""
  r = get_regime(name)
  return dict({f: getattr(r, f) for f in CORPUS_FIELDS}, version=VERSION)


def get_regime(name: str) -> Regime:
  if name not in REGIMES:
    raise ValueError(f'config.data.regime: unknown regime {name!r}; expected '
                     f'one of {sorted(REGIMES)}')
  return REGIMES[name]


def render(task: Task, label: int, rng, size: int,
           acq: Acquisition = NEUTRAL, subtle_fraction: float = 0.0
           ) -> np.ndarray:
  """One image of `task`'s class `label` through scanner `acq`; with
  `subtle_fraction` > 0 the finding is drawn at a random severity."""
  domain = DOMAINS[task.domain]
  cv = Canvas(size, 0.0)
  ctx = domain.background(cv, rng)
  before = cv.img.copy() if subtle_fraction > 0 else None
  task.draw[label](cv, ctx, rng)
  if subtle_fraction > 0:
    severity = (rng.uniform(0, 0.3) if rng.uniform() < subtle_fraction
                else rng.uniform(0.6, 1.0))
    cv.img = before + severity * (cv.img - before)
  cv.img = acq.apply(cv.img, rng)
  return cv.to_uint8()


@dataclasses.dataclass
class Split:
  images: np.ndarray  # uint8[N, S, S, 3]
  labels: np.ndarray  # int32[N]


def make_split(task: Task, split: str, per_class: int, size: int,
               seed: int, regime: Regime = REGIMES['same_scanner']) -> Split:
  """Balanced split, classes interleaved; deterministic in (seed, task, split)."""
  rng = _rng(seed, 'task', task.name, split)
  labels = np.tile(np.arange(len(task.class_names), dtype=np.int32), per_class)
  acq = acquisition(task.name, regime.shift, regime.optics)
  images = np.stack([render(task, int(y), rng, size, acq,
                            regime.subtle_fraction) for y in labels])
  return Split(images, labels)


CAPTION_TEMPLATES = (
    'A {modality} photo of {finding}.',
    '{Modality} showing {finding}.',
    '{Finding} seen on {modality}.',
    'Case report: {finding} on a {modality}.',
    'Representative {modality} demonstrating {finding}.',
)

# Captions that name the modality but no finding (a figure's panel label).
UNINFORMATIVE_TEMPLATES = (
    '{Modality} from the case series.',
    'Follow-up {modality}.',
    'Additional {modality} of the same patient.',
)

DISTRACTOR_CAPTIONS = (
    'Flowchart of patient selection and study enrolment.',
    'Kaplan-Meier survival curve of the two treatment groups.',
    'Bar chart of the distribution of patient age.',
    'Table of baseline demographic characteristics.',
    'Schematic diagram of the proposed network architecture.',
    'Photograph of the surgical instruments used in the procedure.',
)

def coverage(task: Task, levels: Sequence[float] = (1.0,)
             ) -> tuple[float, ...]:
  """The corpus share of each of `task`'s findings: one finding gets each
  level, the rest the last (which one is which is fixed by the task's name)."""
  rank = _rng(0, 'coverage', task.name).permutation(len(task.class_names))
  return tuple(float(levels[min(int(r), len(levels) - 1)]) for r in rank)


def renamed(task: Task, levels: Sequence[float] = ()) -> tuple[float, ...]:
  """The share of each of `task`'s findings' captions that use its synonym:
  one finding gets each level, the rest the last (0 when `levels` is
  empty); the ranks are drawn independently of `coverage`'s."""
  if not levels:
    return (0.0,) * len(task.class_names)
  rank = _rng(0, 'renamed', task.name).permutation(len(task.class_names))
  return tuple(float(levels[min(int(r), len(levels) - 1)]) for r in rank)


def _distractor_image(rng, size):
  cv = Canvas(size, rng.uniform(0.8, 1.0, 3))
  for _ in range(rng.integers(2, 6)):  # bars / boxes of a chart
    x = rng.uniform(0.1, 0.9)
    h = rng.uniform(0.1, 0.8)
    box = ((np.abs(cv.xx - x) < 0.05) & (cv.yy > 0.9 - h) &
           (cv.yy < 0.9)).astype(np.float32)
    cv.paint(box, rng.uniform(0, 1, 3))
  cv.paint(cv.segment(0.08, 0.9, 0.95, 0.9, 0.02), [0, 0, 0])
  return cv.to_uint8()


@dataclasses.dataclass
class Corpus:
  images: np.ndarray  # uint8[N, S, S, 3]
  captions: list[str]
  domains: list[str]  # '' for distractors
  findings: list[str]  # the finding drawn; '' for distractors
  named: list[str]  # the finding the caption names; '' if none


def make_corpus(per_class: int, size: int, seed: int,
                tasks: Sequence[str] | None = None,
                regime: Regime = REGIMES['same_scanner']) -> Corpus:
  """The 'literature': image-caption pairs for the findings of every task
  in proportion to `coverage` (at least one figure each), with varied (and
  in some regimes noisy) captions, plus chart/table distractors. Shuffled."""
  rng = _rng(seed, 'corpus')
  chosen = [TASKS[t] for t in (tasks or TASKS)]
  count = {(t.name, y): max(1, int(round(per_class * share)))
           for t in chosen
           for y, share in enumerate(coverage(t, regime.coverage))}
  items = [(t, y) for k in range(per_class) for t in chosen
           for y in range(len(t.class_names)) if k < count[t.name, y]]
  n_distract = int(round(len(items) * regime.distractors /
                         (1 - regime.distractors)))
  noisy = regime.uninformative + regime.mislabelled > 0
  synonym_share = {c: share for t in TASKS.values()
                   for c, share in zip(t.class_names,
                                       renamed(t, regime.renamed))}
  images, captions, domains, findings, named = [], [], [], [], []
  # Figures' scanners from their own stream: the captions and findings stay
  # those of the regime without site diversity.
  sites = _rng(seed, 'corpus_sites')
  order = rng.permutation(len(items) + n_distract)
  for i in order:
    if i >= len(items):
      images.append(_distractor_image(rng, size))
      captions.append(str(rng.choice(DISTRACTOR_CAPTIONS)))
      domains.append('')
      findings.append('')
      named.append('')
      continue
    task, y = items[i]
    modality = str(rng.choice(DOMAINS[task.domain].modality))
    finding = name = task.class_names[y]
    u = rng.uniform() if noisy else 1.0
    if u < regime.uninformative:
      template, name = str(rng.choice(UNINFORMATIVE_TEMPLATES)), ''
    else:
      template = str(rng.choice(CAPTION_TEMPLATES))
      if u < regime.uninformative + regime.mislabelled:
        others = [c for t in TASKS.values() if t.domain == task.domain
                  for c in t.class_names if c != finding]
        name = str(rng.choice(others))
    if regime.renamed and name and rng.uniform() < synonym_share[name]:
      name = SYNONYMS[name]
    captions.append(template.format(
        modality=modality, Modality=modality.capitalize(), finding=name,
        Finding=name.capitalize()))
    acq = NEUTRAL
    if regime.corpus_sites:
      acq = _scanner(sites, task.domain == 'xray', regime.corpus_sites,
                     regime.corpus_sites)
    images.append(render(task, y, rng, size, acq))
    domains.append(task.domain)
    findings.append(finding)
    named.append(name)
  return Corpus(np.stack(images), captions, domains, findings, named)


def vocabulary(regime: str = 'same_scanner') -> list[str]:
  """Every word the benchmark's captions and prompts can contain under
  `regime`. The same_scanner vocabulary is the one the default benchmark
  always had: word ids seed the text embedding's init, so adding words
  would change every default result."""
  import re
  texts = list(DISTRACTOR_CAPTIONS) + list(CAPTION_TEMPLATES)
  if get_regime(regime).uninformative > 0:  # captions that name no finding
    texts += list(UNINFORMATIVE_TEMPLATES)
  if get_regime(regime).renamed:  # the literature's own terms
    texts += list(SYNONYMS.values())
  for d in DOMAINS.values():
    texts += list(d.modality)
  for t in TASKS.values():
    texts += list(t.class_names)
  texts += ['a photo of', 'an image of', 'a medical image showing']
  words = set()
  for text in texts:
    text = text.replace('{', ' ').replace('}', ' ')
    words.update(re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower()))
  return sorted(words)
