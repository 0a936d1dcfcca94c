"""Tests for mgtil_jax.data.synth (the embedded benchmark) and
mgtil_jax.data.tasks (loading, caching, batch sampling)."""

import collections
import re

import ml_collections
import numpy as np
import pytest

from mgtil_jax.data import benchmarks, synth, tasks

SIZE = 16  # small images keep rendering fast; the generator is size-agnostic


def _data_cfg(**overrides):
  cfg = dict(name='mgtil_synth', order='xray_lesion+path_stain',
             image_size=SIZE, train_per_class=2, test_per_class=1, seed=0)
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


# ---------------------------------------------------------------- splits --


@pytest.mark.parametrize('name', ['xray_lesion', 'path_tissue', 'fundus_dr'])
def test_split_shapes_dtypes_and_balance(name):
  task = synth.TASKS[name]
  per_class = 3
  split = synth.make_split(task, 'train', per_class, SIZE, seed=0)
  n = per_class * len(task.class_names)
  assert split.images.shape == (n, SIZE, SIZE, 3)
  assert split.images.dtype == np.uint8
  assert split.labels.shape == (n,) and split.labels.dtype == np.int32
  counts = np.bincount(split.labels, minlength=len(task.class_names))
  assert counts.tolist() == [per_class] * len(task.class_names)
  # Not a blank canvas: the images have content.
  assert split.images.std() > 5


def test_split_is_deterministic_in_seed_task_and_split():
  task = synth.TASKS['fundus_disc']
  a = synth.make_split(task, 'train', 2, SIZE, seed=3)
  b = synth.make_split(task, 'train', 2, SIZE, seed=3)
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.labels, b.labels)
  other_seed = synth.make_split(task, 'train', 2, SIZE, seed=4)
  other_split = synth.make_split(task, 'test', 2, SIZE, seed=3)
  assert not np.array_equal(a.images, other_seed.images)
  assert not np.array_equal(a.images, other_split.images)


def test_classes_of_a_task_look_different():
  # Mean images per class should differ (the finding is drawn), else the
  # benchmark would be unlearnable.
  task = synth.TASKS['xray_region']
  split = synth.make_split(task, 'train', 6, 32, seed=0)
  means = [split.images[split.labels == c].astype(np.float64).mean(0)
           for c in range(len(task.class_names))]
  for i in range(len(means)):
    for j in range(i + 1, len(means)):
      assert np.abs(means[i] - means[j]).mean() > 1.0


def test_class_names_unique_across_all_tasks():
  names = [c for t in synth.TASKS.values() for c in t.class_names]
  duplicates = [n for n, k in collections.Counter(names).items() if k > 1]
  assert not duplicates
  for t in synth.TASKS.values():
    assert len(t.class_names) == len(t.draw)
    assert t.domain in synth.DOMAINS


def test_orders():
  assert sorted(synth.ORDERS['domain']) == sorted(synth.TASKS)
  assert list(synth.ORDERS['alphabetical']) == sorted(synth.TASKS)
  # Order I groups tasks by domain: each domain is one contiguous run.
  domains = [synth.TASKS[n].domain for n in synth.ORDERS['domain']]
  runs = [d for i, d in enumerate(domains) if i == 0 or d != domains[i - 1]]
  assert len(runs) == len(set(domains)) == 3


# ----------------------------------------------------------- acquisition --


def test_acquisition_is_fixed_per_task_and_differs_across_tasks():
  # No shift: the corpus's neutral scanner.
  assert synth.acquisition('fundus_dr', 0.0) == synth.NEUTRAL
  a = synth.acquisition('fundus_dr')
  assert a == synth.acquisition('fundus_dr')
  others = {synth.acquisition(n) for n in synth.TASKS}
  assert len(others) == len(synth.TASKS)
  for n, t in synth.TASKS.items():
    if t.domain == 'xray':  # radiographs stay grayscale
      g = synth.acquisition(n).gain
      assert g[0] == g[1] == g[2]


def test_acquisition_optics_scale_apart_from_tone():
  # optics=0: the task's tone (gamma, cast, offset) at full shift, the
  # corpus's optics (no blur, no zoom, its noise).
  full = synth.acquisition('path_grade', 1.0)
  tone = synth.acquisition('path_grade', 1.0, optics=0.0)
  assert (tone.gamma, tone.gain, tone.offset) == (full.gamma, full.gain,
                                                  full.offset)
  assert (tone.blur, tone.zoom, tone.noise) == (0.0, 1.0, synth.NEUTRAL.noise)
  assert synth.acquisition('path_grade', 0.5, optics=None) == (
      synth.acquisition('path_grade', 0.5, optics=0.5))


def test_acquisition_matches_numpy_for_gamma_gain_and_zoom():
  rng = np.random.default_rng(0)
  img = rng.uniform(0, 1, (8, 8, 3)).astype(np.float32)
  # Gamma, colour cast and offset without noise: an independent numpy line.
  acq = synth.Acquisition(gamma=1.7, gain=(0.8, 1.0, 1.2), offset=0.05,
                          noise=0.0)
  np.testing.assert_allclose(acq.apply(img, rng),
                             img ** 1.7 * [0.8, 1.0, 1.2] + 0.05, rtol=1e-5)
  np.testing.assert_allclose(synth.Acquisition(noise=0.0).apply(img, rng),
                             img, rtol=1e-6)
  # Zoom > 1 magnifies about the centre: a centred disc covers more pixels.
  cv = synth.Canvas(32, 0.0)
  cv.paint(cv.disc(0.5, 0.5, 0.2), [1.0, 1.0, 1.0])
  area = lambda x: (x[..., 0] > 0.5).sum()
  zoomed = synth.Acquisition(zoom=1.5, noise=0.0).apply(cv.img, rng)
  assert area(zoomed) == pytest.approx(area(cv.img) * 1.5 ** 2, rel=0.1)


def test_task_images_are_shifted_from_the_corpus():
  # The corpus's neutral scanner versus each task's own: the mean colour of
  # the same findings differs (what keeps zero-shot below fine-tuning).
  for name in ('xray_region', 'path_tissue', 'fundus_disc'):
    task = synth.TASKS[name]
    split = synth.make_split(task, 'train', 8, SIZE, seed=0, regime=SHIFTED)
    rng = np.random.default_rng(0)
    neutral = np.stack([synth.render(task, int(y), rng, SIZE)
                        for y in split.labels])
    gap = np.abs(split.images.reshape(-1, 3).mean(0) -
                 neutral.reshape(-1, 3).mean(0)).max()
    assert gap > 8, (name, gap)


def test_subtle_cases_are_fainter():
  # Without subtle cases the finding is drawn at full strength; with them
  # the images differ less from the background on average.
  task = synth.TASKS['fundus_dr']
  acq = synth.Acquisition(noise=0.0)

  def contrast(fraction):
    out = []
    for i in range(40):
      bg = synth.render(task, 0, np.random.default_rng(i), SIZE, acq,
                        fraction)
      ex = synth.render(task, 3, np.random.default_rng(i), SIZE, acq,
                        fraction)
      out.append(np.abs(ex.astype(float) - bg).mean())
    return np.array(out)

  full, subtle = contrast(0.0), contrast(SHIFTED.subtle_fraction)
  assert subtle.mean() < 0.9 * full.mean()
  assert (subtle < 0.35 * full).mean() > 0.05  # some barely visible


# ---------------------------------------------------------------- corpus --


SHIFTED = synth.REGIMES['shifted']


@pytest.fixture(scope='module')
def corpus():
  return synth.make_corpus(per_class=2, size=SIZE, seed=0,
                           tasks=['xray_pattern', 'fundus_rop'])


@pytest.fixture(scope='module')
def shifted_corpus():
  return synth.make_corpus(per_class=2, size=SIZE, seed=0,
                           tasks=['xray_pattern', 'fundus_rop'],
                           regime=SHIFTED)


def test_corpus_captions_name_their_findings(corpus):
  # The default regime: every finding per_class times, captions name it.
  chosen = [synth.TASKS['xray_pattern'], synth.TASKS['fundus_rop']]
  n_items = 2 * sum(len(t.class_names) for t in chosen)
  # Distractors: round(n_items * 0.15 / 0.85) = round(12 * 0.1765) = 2.
  assert len(corpus.captions) == n_items + 2
  assert corpus.images.shape == (n_items + 2, SIZE, SIZE, 3)
  assert corpus.images.dtype == np.uint8
  domain_of = {c: t.domain for t in chosen for c in t.class_names}
  for caption, domain, finding, named in zip(
      corpus.captions, corpus.domains, corpus.findings, corpus.named):
    assert named == finding
    if finding:
      # Templates may capitalise the finding; compare case-insensitively.
      assert finding in caption.lower(), caption
      assert domain == domain_of[finding]
      assert any(m in caption.lower()
                 for m in synth.DOMAINS[domain].modality), caption
    else:
      assert domain == '' and caption in synth.DISTRACTOR_CAPTIONS
  counts = collections.Counter(f for f in corpus.findings if f)
  assert counts == {c: 2 for c in domain_of}


def test_shifted_corpus_coverage_and_noisy_captions(shifted_corpus):
  corpus = shifted_corpus
  chosen = [synth.TASKS['xray_pattern'], synth.TASKS['fundus_rop']]
  # Figures per finding: per_class (2) x its coverage share, at least 1.
  want = {c: max(1, round(2 * share)) for t in chosen
          for c, share in zip(t.class_names,
                              synth.coverage(t, SHIFTED.coverage))}
  n_items = sum(want.values())
  n_distract = round(n_items * 0.25 / 0.75)
  assert len(corpus.captions) == n_items + n_distract
  assert corpus.images.shape == (n_items + n_distract, SIZE, SIZE, 3)
  assert corpus.images.dtype == np.uint8
  assert collections.Counter(f for f in corpus.findings if f) == want
  domain_of = {c: t.domain for t in synth.TASKS.values()
               for c in t.class_names}
  for caption, domain, finding, named in zip(
      corpus.captions, corpus.domains, corpus.findings, corpus.named):
    if not finding:
      assert domain == '' and named == ''
      assert caption in synth.DISTRACTOR_CAPTIONS
      continue
    assert domain == domain_of[finding]
    assert any(m in caption.lower()
               for m in synth.DOMAINS[domain].modality), caption
    if named:  # templates may capitalise the finding
      assert named in caption.lower() and domain_of[named] == domain
    else:
      assert not any(c in caption.lower() for c in domain_of), caption


def test_corpus_noise_and_coverage_proportions():
  c = synth.make_corpus(per_class=40, size=8, seed=0,
                        tasks=['path_grade', 'fundus_disc'], regime=SHIFTED)
  kinds = collections.Counter(
      'distractor' if not f else 'none' if not n else
      'right' if n == f else 'wrong' for f, n in zip(c.findings, c.named))
  items = len(c.findings) - kinds['distractor']
  assert kinds['distractor'] / len(c.findings) == pytest.approx(0.25,
                                                                abs=0.01)
  assert kinds['none'] / items == pytest.approx(
      SHIFTED.uninformative, abs=0.07)
  assert kinds['wrong'] / items == pytest.approx(
      SHIFTED.mislabelled, abs=0.05)
  for name in ('path_grade', 'fundus_disc'):  # one finding of each level
    assert sorted(synth.coverage(synth.TASKS[name], SHIFTED.coverage)
                  ) == sorted(SHIFTED.coverage)


def test_synonyms_cover_every_finding_and_share_no_word():
  names = [c for t in synth.TASKS.values() for c in t.class_names]
  assert sorted(synth.SYNONYMS) == sorted(names)
  terms = list(synth.SYNONYMS.values())
  assert len(set(terms)) == len(terms)
  for name, term in synth.SYNONYMS.items():
    assert not set(name.split()) & set(term.split()), (name, term)
    assert term not in names


def test_renamed_captions_use_the_literature_term():
  levels = (1.0, 0.5, 0.0)
  regime = synth.Regime(renamed=levels)
  c = synth.make_corpus(per_class=200, size=4, seed=0,
                        tasks=['xray_region', 'fundus_dr'], regime=regime)
  by_term = {v: k for k, v in synth.SYNONYMS.items()}
  share = {n: s for name in ('xray_region', 'fundus_dr')
           for n, s in zip(synth.TASKS[name].class_names,
                           synth.renamed(synth.TASKS[name], levels))}
  uses = collections.defaultdict(list)
  for caption, finding, named in zip(c.captions, c.findings, c.named):
    if not finding:
      continue
    assert named in (finding, synth.SYNONYMS[finding]), (finding, named)
    assert named in caption.lower()
    uses[finding].append(named in by_term)
  for finding, flags in uses.items():  # 200 captions each: sd <= 0.035
    assert np.mean(flags) == pytest.approx(share[finding], abs=0.1), finding
  # One finding per task always renamed, one half the time, the rest never.
  for name in ('xray_region', 'fundus_dr'):
    got = sorted(synth.renamed(synth.TASKS[name], levels))
    assert got[-2:] == [0.5, 1.0] and set(got[:-2]) == {0.0}
  assert synth.renamed(synth.TASKS['fundus_dr']) == (0.0,) * 4


def test_corpus_is_deterministic(corpus):
  again = synth.make_corpus(per_class=2, size=SIZE, seed=0,
                            tasks=['xray_pattern', 'fundus_rop'])
  np.testing.assert_array_equal(corpus.images, again.images)
  assert corpus.captions == again.captions
  other = synth.make_corpus(per_class=2, size=SIZE, seed=1,
                            tasks=['xray_pattern', 'fundus_rop'])
  assert not np.array_equal(corpus.images, other.images)


def test_vocabulary_covers_captions(corpus, shifted_corpus):
  literature = synth.make_corpus(per_class=3, size=4, seed=0,
                                 regime=synth.REGIMES['literature'])
  assert any(t in c.lower() for c in literature.captions
             for t in synth.SYNONYMS.values())
  for regime, captions in (('same_scanner', corpus.captions),
                           ('shifted', shifted_corpus.captions),
                           ('literature', literature.captions)):
    vocab = set(synth.vocabulary(regime))
    for caption in captions:
      for word in re.findall(r'[a-z0-9]+|[^\sa-z0-9]', caption.lower()):
        assert word in vocab, (regime, word, caption)


# ----------------------------------------------------------- batch sampler --


@pytest.mark.parametrize('n,batch_size', [(10, 3), (7, 7), (5, 12)])
def test_batch_indices_cover_each_example_once_per_epoch(n, batch_size):
  epochs = 4
  steps = -(-epochs * n // batch_size)  # ceil
  stream = np.concatenate([tasks.batch_indices(n, batch_size, s, seed=1,
                                               stream=0)
                           for s in range(steps)])
  for e in range(epochs):
    epoch = stream[e * n:(e + 1) * n]
    assert sorted(epoch.tolist()) == list(range(n))
  # Consecutive epochs are reshuffled, not repeated (4 epochs; a fixed order
  # would make all equal).
  orders = {tuple(stream[e * n:(e + 1) * n]) for e in range(epochs)}
  assert len(orders) > 1


def test_batch_indices_is_a_pure_function_of_step():
  n, batch_size = 13, 5
  sequential = [tasks.batch_indices(n, batch_size, s, seed=7, stream=2)
                for s in range(20)]
  for k in (0, 3, 11, 19):  # computed alone, out of order
    alone = tasks.batch_indices(n, batch_size, k, seed=7, stream=2)
    np.testing.assert_array_equal(alone, sequential[k])
  assert all(b.shape == (batch_size,) for b in sequential)


def test_batch_indices_depend_on_seed_and_stream():
  first = lambda **kw: np.concatenate(
      [tasks.batch_indices(50, 10, s, **kw) for s in range(5)])
  base = first(seed=0, stream=0)
  assert not np.array_equal(base, first(seed=1, stream=0))
  assert not np.array_equal(base, first(seed=0, stream=1))


# ---------------------------------------------------------------- loading --


def test_load_benchmark_bad_order_names_config_field():
  with pytest.raises(ValueError, match=r'config\.data\.order'):
    benchmarks.load_benchmark(_data_cfg(order='by_colour'))
  with pytest.raises(ValueError, match=r'config\.data\.order'):
    benchmarks.load_benchmark(_data_cfg(order='xray_lesion+not_a_task'))


def test_load_benchmark_bad_regime_names_config_field():
  with pytest.raises(ValueError, match=r'config\.data\.regime'):
    benchmarks.load_benchmark(_data_cfg(regime='harder'))


def test_load_benchmark_regime_changes_the_images():
  plain = benchmarks.load_benchmark(_data_cfg(order='fundus_dr'))[0]
  shifted = benchmarks.load_benchmark(_data_cfg(order='fundus_dr',
                                           regime='shifted'))[0]
  np.testing.assert_array_equal(plain.train_labels, shifted.train_labels)
  assert not np.array_equal(plain.train_images, shifted.train_images)


def test_regimes_that_differ_only_in_task_images_share_one_corpus():
  # new_site keeps same_scanner's literature: one corpus, one vocabulary
  # and so one pretrained model (the pretraining cache's key).
  assert synth.corpus_regime('same_scanner') == 'same_scanner'
  assert synth.corpus_regime('new_site') == 'same_scanner'
  assert synth.corpus_regime('shifted') == 'shifted'
  assert synth.vocabulary('new_site') == synth.vocabulary('same_scanner')
  a = synth.make_corpus(per_class=1, size=SIZE, seed=0, tasks=['fundus_dr'])
  b = synth.make_corpus(per_class=1, size=SIZE, seed=0, tasks=['fundus_dr'],
                        regime=synth.REGIMES['new_site'])
  np.testing.assert_array_equal(a.images, b.images)
  assert a.captions == b.captions
  # ... while its task images differ (the site's tone and subtle cases).
  task = synth.TASKS['fundus_dr']
  plain = synth.make_split(task, 'test', 2, SIZE, seed=0)
  site = synth.make_split(task, 'test', 2, SIZE, seed=0,
                          regime=synth.REGIMES['new_site'])
  assert not np.array_equal(plain.images, site.images)


def test_load_benchmark_bad_name_names_config_field():
  with pytest.raises(ValueError, match=r'config\.data\.name'):
    benchmarks.load_benchmark(_data_cfg(name='medmnist_typo'))


def test_load_benchmark_matches_make_split():
  loaded = benchmarks.load_benchmark(_data_cfg())
  assert [t.name for t in loaded] == ['xray_lesion', 'path_stain']
  for t in loaded:
    spec = synth.TASKS[t.name]
    assert t.domain == spec.domain and t.class_names == spec.class_names
    train = synth.make_split(spec, 'train', 2, SIZE, seed=0)
    test = synth.make_split(spec, 'test', 1, SIZE, seed=0)
    np.testing.assert_array_equal(t.train_images, train.images)
    np.testing.assert_array_equal(t.train_labels, train.labels)
    np.testing.assert_array_equal(t.test_images, test.images)
    np.testing.assert_array_equal(t.test_labels, test.labels)


def test_load_benchmark_list_order():
  loaded = benchmarks.load_benchmark(_data_cfg(order=['path_stain', 'xray_lesion']))
  assert [t.name for t in loaded] == ['path_stain', 'xray_lesion']


def test_load_benchmark_rejects_empty_order_and_negative_count():
  with pytest.raises(ValueError, match=r'config\.data\.order'):
    benchmarks.load_benchmark(_data_cfg(order=''))
  with pytest.raises(ValueError, match=r'config\.data\.num_tasks'):
    benchmarks.load_benchmark(_data_cfg(order='domain', num_tasks=-1))


def test_load_benchmark_num_tasks_keeps_a_prefix():
  loaded = benchmarks.load_benchmark(_data_cfg(
      order='fundus_rop+xray_lesion+path_stain', num_tasks=2))
  assert [t.name for t in loaded] == ['fundus_rop', 'xray_lesion']


def test_load_benchmark_named_order():
  loaded = benchmarks.load_benchmark(_data_cfg(order='alphabetical', image_size=8,
                                          train_per_class=1))
  assert [t.name for t in loaded] == sorted(synth.TASKS)


def test_load_benchmark_cache_is_reused_and_keyed(tmp_path, monkeypatch):
  cfg = _data_cfg(order='path_grade')
  first = benchmarks.load_benchmark(cfg, cache_dir=str(tmp_path))
  assert (tmp_path / 'path_grade.npz').exists()

  # A second load with the same config must not render anything.
  def fail(*args, **kwargs):
    raise AssertionError('rebuilt although the cache matches')
  with monkeypatch.context() as m:
    m.setattr(synth, 'make_split', fail)
    second = benchmarks.load_benchmark(cfg, cache_dir=str(tmp_path))
  np.testing.assert_array_equal(first[0].train_images, second[0].train_images)
  np.testing.assert_array_equal(first[0].test_labels, second[0].test_labels)

  # A different config invalidates the cache instead of returning stale data.
  changed = benchmarks.load_benchmark(_data_cfg(order='path_grade', seed=5),
                                 cache_dir=str(tmp_path))
  assert not np.array_equal(changed[0].train_images, first[0].train_images)


def test_preprocess_matches_numpy():
  images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), np.uint8)
  mean = np.array(tasks.CLIP_MEAN)
  std = np.array(tasks.CLIP_STD)
  expected = (images / 255.0 - mean) / std
  np.testing.assert_allclose(np.asarray(tasks.preprocess(images)), expected,
                             rtol=1e-5, atol=1e-5)


def test_corpus_sites_vary_the_figures_tone_and_keep_the_captions():
  # corpus_sites draws each figure's scanner from its own stream: the
  # captions and findings are those of the same regime without sites, and
  # the figures of one finding spread in mean brightness far more than the
  # neutral scanner's (whose only variation is the finding's own drawing).
  plain = synth.make_corpus(per_class=24, size=SIZE, seed=0,
                            tasks=['path_grade'])
  sites = synth.make_corpus(per_class=24, size=SIZE, seed=0,
                            tasks=['path_grade'],
                            regime=synth.Regime(corpus_sites=1.0))
  assert sites.captions == plain.captions
  assert sites.findings == plain.findings

  def brightness_spread(corpus):
    keep = [i for i, f in enumerate(corpus.findings) if f == 'adenoma']
    return corpus.images[keep].reshape(len(keep), -1).mean(1).std()

  assert brightness_spread(sites) > 2 * brightness_spread(plain)
  # A regime with sites has its own corpus (and so its own pretrained model).
  assert synth.corpus_regime('many_sites') == 'many_sites'
