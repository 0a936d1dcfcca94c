r"""MedXtreme (MGTIL): 6 hard datasets (docs/datasets.md).

  python launch.py --config configs/medxtreme.py:root=/data/mgtil,order=I \
      --workdir runs/medxtreme_I

Arguments: as configs/hieramed.py (root, order I|II, method, preset, size,
steps, tasks, data_dir, corpus, pool, runlocal).

Folders under root, each in its dataset's own public layout (`python -m
mgtil_jax.data.builder --list` prints them); rename with
--config.data.folders.<name>=<folder>:

  aod/        AOD (fundus)             bmc/        bone-marrow cells
  isic2024/   ISIC 2024 skin           nct_crc/    NCT-CRC-HE-100K
  nih_cxr14/  NIH ChestX-ray14         pitvis/     PITVIS endoscopy
"""

from configs import hieramed

# Registry names (the same orders as
# mgtil_jax.data.sources.mgtil.MEDXTREME_ORDERS; tests/test_builder.py checks).
ORDERS = {
    'I': ('aod', 'bmc', 'isic2024', 'nct_crc', 'nih_cxr14', 'pitvis'),
    'II': ('aod', 'nct_crc', 'pitvis', 'isic2024', 'nih_cxr14', 'bmc'),
}


def get_config(arg=None):
  return hieramed.sequence_config(arg, 'medxtreme', ORDERS)
