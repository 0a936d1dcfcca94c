"""Tests for mgtil_jax.api (load, encode_image, encode_text, zero-shot) and
for starting the trainer from a checkpoint (`config.model.init=DIR`).
Reference values are open_clip's, from the golden fixture (see
tools/make_biomedclip_fixtures.py)."""

import functools
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from configs import mgtil_synth
from mgtil_jax import api
from mgtil_jax import training as train
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.models import biomedclip, clip, preprocessing

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'biomedclip_tiny'
TOL = 1e-4


@functools.lru_cache(maxsize=None)
def golden():
  with np.load(FIXTURE / 'golden.npz') as f:
    arrays = {k: f[k] for k in f.files}
  with open(FIXTURE / 'golden.json', encoding='utf-8') as f:
    return arrays, json.load(f)


@pytest.fixture(scope='module')
def model():
  return api.load(str(FIXTURE))


def test_encode_image_uint8_and_float(model):
  arrays, _ = golden()
  img = model.encode_image(arrays['images'])
  assert img.shape == arrays['image_embeddings'].shape and img.dtype == np.float32
  assert np.abs(img - arrays['image_embeddings']).max() <= TOL
  floats = model.encode_image(arrays['images'].astype(np.float32) / 255.0)
  assert np.abs(floats - arrays['image_embeddings']).max() <= TOL
  unit = model.encode_image(arrays['images'], normalize=True)
  np.testing.assert_allclose(np.linalg.norm(unit, axis=-1), 1.0, rtol=1e-5)


def test_encode_image_preprocesses_any_size(model):
  """A non-square uint8 image gives the embedding of the pixels open_clip's
  own transform produced for it (equal to within one grey level)."""
  arrays, _ = golden()
  src, pixels = arrays['preprocess_src_0'], arrays['preprocess_out_0']
  encode_pixels = jax.jit(lambda p, x: model.model.apply(
      {'params': p}, x, method=clip.CLIP.encode_image))
  ours = model.encode_image(src[None])
  ref = np.asarray(encode_pixels(model.params, pixels[None]))
  assert np.abs(ours - ref).max() <= 1e-2
  gray = model.encode_image(arrays['preprocess_src_3'][None])
  ref = np.asarray(encode_pixels(model.params,
                                 arrays['preprocess_out_3'][None]))
  assert np.abs(gray - ref).max() <= TOL


def test_batching_does_not_change_results(model):
  arrays, meta = golden()
  whole = model.encode_image(arrays['images'])
  chunks = model.encode_image(arrays['images'], batch_size=3)  # 3 + 1 padded
  np.testing.assert_allclose(chunks, whole, atol=1e-6)
  texts = meta['texts'][:5]
  np.testing.assert_allclose(model.encode_text(texts, batch_size=2),
                             model.encode_text(texts), atol=1e-6)


def test_encode_text_matches_open_clip(model):
  arrays, meta = golden()
  np.testing.assert_array_equal(model.tokenize(meta['texts']),
                                arrays['token_ids'])
  txt = model.encode_text(meta['texts'])
  assert np.abs(txt - arrays['text_embeddings']).max() <= TOL
  single = model.encode_text(meta['texts'][0])
  assert single.shape == (1, txt.shape[1])


def test_zero_shot_matches_open_clip(model):
  arrays, meta = golden()
  probs = model.zero_shot(arrays['images'], meta['class_names'],
                          templates=meta['templates'])
  assert probs.shape == (len(arrays['images']), len(meta['class_names']))
  np.testing.assert_allclose(probs, arrays['zero_shot_probs'], atol=1e-5)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  # Default template: BiomedCLIP's model card prompt.
  assert model.zero_shot(arrays['images'][:1], ['a', 'b']).shape == (1, 2)


def test_bad_inputs_are_clear_errors(model):
  arrays, _ = golden()
  with pytest.raises(ValueError, match=r'\[B, H, W, C\]'):
    model.encode_image(arrays['images'][0])
  with pytest.raises(ValueError, match='uint8'):
    model.encode_image(arrays['images'].astype(np.int32))
  with pytest.raises(ValueError, match='templates'):
    model.zero_shot(arrays['images'], ['x'], templates=('no slot',))
  with pytest.raises(ValueError, match='class_names'):
    model.zero_shot(arrays['images'], [])


def test_save_and_load_round_trip(model, tmp_path):
  out = model.save(str(tmp_path / 'export'))
  back = api.load(out)
  jax.tree.map(np.testing.assert_array_equal, back.params, model.params)
  assert back.config == model.config and back.preprocess == model.preprocess
  arrays, meta = golden()
  np.testing.assert_array_equal(back.encode_image(arrays['images']),
                                model.encode_image(arrays['images']))
  np.testing.assert_array_equal(back.tokenize(meta['texts']),
                                arrays['token_ids'])


def test_bfloat16_model_keeps_float32_weights():
  arrays, _ = golden()
  bf16 = api.load(str(FIXTURE), dtype='bfloat16')
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf16.params))
  img = bf16.encode_image(arrays['images'])
  ref = arrays['image_embeddings']
  assert 0 < np.linalg.norm(img - ref) / np.linalg.norm(ref) <= 1e-2


# ------------------------------------------------------ trainer from a dir --


def _clip_stats_copy(tmp_path):
  """The fixture with CLIP's normalisation (what the trainer applies)."""
  ck_dir = tmp_path / 'ckpt'
  shutil.copytree(FIXTURE, ck_dir)
  config = json.loads((ck_dir / 'open_clip_config.json').read_text())
  config['preprocess_cfg'] = {'mean': list(tasks_lib.CLIP_MEAN),
                              'std': list(tasks_lib.CLIP_STD)}
  (ck_dir / 'open_clip_config.json').write_text(json.dumps(config))
  return ck_dir


def _config(init, preset):
  config = mgtil_synth.get_config('runlocal,tasks=1,steps=2')
  config.model.init = str(init)
  config.model.preset = str(preset)
  config.train.batch_size = 4
  config.eval.batch_size = 8
  return config


def test_trainer_starts_from_a_checkpoint_dir(tmp_path):
  ck_dir = _clip_stats_copy(tmp_path)
  config = _config(ck_dir, ck_dir)
  exp = train.setup(config, str(tmp_path / 'run'))
  assert isinstance(exp.tokenizer, preprocessing.OpenClipTokenizer)
  assert exp.tokenizer.context_length == 256
  params = train.initial_params(exp, None)
  ref = biomedclip.load_checkpoint(str(ck_dir)).params
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), ref)
  # Placed with the run's shardings.
  for leaf, sharding in zip(jax.tree.leaves(params),
                            jax.tree.leaves(exp.param_shardings)):
    assert leaf.sharding == sharding
  # One task step runs from it.
  tx = train.make_optimizer(lr=1e-4, steps=2, warmup_steps=1,
                            weight_decay=0.0, freeze_logit_scale=True)
  shardings = train.state_shardings(exp, tx)
  with exp.context():
    state = {'params': params,
             'opt': jax.jit(tx.init, out_shardings=shardings['opt'])(params)}
    step = train.make_task_step(exp, tx, shardings)
    task = exp.tasks[0]
    batch = exp.put_batch(tasks_lib.task_batch(task, 0, 4, 0, 0))
    prompts = exp.replicated(exp.prompt_tokens(task.class_names))
    _, metrics = step(state, batch, prompts)
  assert np.isfinite(float(metrics['loss']))


@pytest.mark.parametrize('case, error, message', [
    ('preset differs', ValueError, r'set --config.model.preset=.*ckpt'),
    ('mean/std differ', ValueError, 'mean/std'),
    ('image size differs', ValueError, 'config.data.image_size=64'),
    ('no such path', FileNotFoundError, 'no such path'),
])
def test_trainer_init_errors_are_clear(tmp_path, case, error, message):
  ck_dir = _clip_stats_copy(tmp_path)
  config = _config(ck_dir, ck_dir)
  if case == 'preset differs':
    config.model.preset = 'tiny'
  elif case == 'mean/std differ':
    config.model.init = config.model.preset = str(FIXTURE)
  elif case == 'image size differs':
    config.data.image_size = 64
  else:
    config.model.init = str(tmp_path / 'missing')
  with pytest.raises(error, match=message):
    train.setup(config, str(tmp_path / 'run'))
