"""The two MGTIL benchmarks as plain data (docs/datasets.md): task orders over
registry names, and the sizes the paper reports for each dataset.

Where our readers cannot match the paper's numbers from the public releases
(RANZCR, AOD, ISIC 2024, ...), the reader's module docstring says why.
"""

from __future__ import annotations

# HieraMedTransfer: 3 domains x 3 datasets. Order I groups by domain
# (X-ray, pathology, fundus); order II is alphabetical.
HIERAMED_ORDERS = {
    'I': ('ranzcr', 'chexchonet', 'pd', 'breakhis', 'chaoyang', 'gashissdb',
          'eyepacs', 'airogs', 'farfum_rop'),
    'II': ('airogs', 'breakhis', 'chaoyang', 'chexchonet', 'eyepacs',
           'farfum_rop', 'gashissdb', 'pd', 'ranzcr'),
}

# MedXtreme: 6 hard datasets. Order I alphabetical; order II as the paper
# lists it (AOD, NCT100K, PITVIS, ISIC2024, NIH, BMC).
MEDXTREME_ORDERS = {
    'I': ('aod', 'bmc', 'isic2024', 'nct_crc', 'nih_cxr14', 'pitvis'),
    'II': ('aod', 'nct_crc', 'pitvis', 'isic2024', 'nih_cxr14', 'bmc'),
}

BENCHMARKS = {
    'hieramed': HIERAMED_ORDERS,
    'medxtreme': MEDXTREME_ORDERS,
}

# (images, classes) as the paper reports them.
PAPER_SIZES = {
    'ranzcr': (33665, 11),
    'chexchonet': (71589, 4),
    'pd': (4575, 3),
    'breakhis': (7909, 2),
    'chaoyang': (6160, 4),
    'gashissdb': (33284, 2),
    'eyepacs': (35126, 5),
    'airogs': (101442, 2),
    'farfum_rop': (1533, 3),
    'aod': (10000, 8),
    'bmc': (171375, 21),
    'isic2024': (81722, 33),
    'nct_crc': (100000, 9),
    'nih_cxr14': (112120, 15),
    'pitvis': (120024, 15),
}
