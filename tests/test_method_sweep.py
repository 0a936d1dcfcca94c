"""`--sweep` parsing (mgtil_jax/entry/sweep.py): values as literals, bad specs
named; the sweep itself is train.run per value (covered by test_methods)."""

import pytest

from configs import mgtil_synth
from mgtil_jax.entry import sweep


def test_parse_sweep_values_are_literals():
  config = mgtil_synth.get_config('runlocal')
  field, values = sweep.parse_sweep('method_kwargs.alpha=0.5,1,1.5', config)
  assert field == 'method_kwargs.alpha' and values == [0.5, 1, 1.5]
  _, values = sweep.parse_sweep('method_kwargs.regularizer=none,dfg', config)
  assert values == ['none', 'dfg']


def test_set_keeps_the_field_type():
  config = mgtil_synth.get_config('runlocal')
  sweep._set(config, 'method_kwargs.alpha', 1)  # pylint: disable=protected-access
  assert isinstance(config.method_kwargs.alpha, float)


@pytest.mark.parametrize('spec,match', [
    ('method_kwargs.alpha', 'FIELD=V1'),
    ('method_kwargs.gamma=1,2', "no field 'method_kwargs.gamma'"),
    ('=1', 'FIELD=V1')])
def test_bad_sweep_is_named(spec, match):
  with pytest.raises(ValueError, match=match):
    sweep.parse_sweep(spec, mgtil_synth.get_config('runlocal'))
