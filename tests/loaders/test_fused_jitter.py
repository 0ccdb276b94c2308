"""The compiled jitter where numba cannot keep its on-disk cache: a read-only install whose
user has no writable home (a cluster's container) must still train, compiling each process."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

JITTER_ONE_IMAGE = """
import numpy as np
from nvidia.dali import fn, pipeline_def, types
from dist_geo.loaders.fused_jitter import fused_jitter

@pipeline_def
def pipe():
    x = types.Constant(np.full((4, 6, 3), 100, np.uint8), device="cpu")
    factors = types.Constant(np.float32([1.5, 1.0, 1.0, 0.0]), device="cpu")
    order = types.Constant(np.int32([0]), device="cpu")
    return fused_jitter()(x, factors, order)

p = pipe(batch_size=1, num_threads=1, device_id=None)
p.build()
print(float(np.array(p.run()[0][0]).max()))
"""


def test_the_jitter_compiles_where_numba_cannot_write_a_cache():
    # numba's only cache locator is then the user-provided folder, and none is provided: the
    # situation of a read-only install and home, where numba finds no locator at all
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "UserProvidedCacheLocator"}
    env.pop("NUMBA_CACHE_DIR", None)
    run = subprocess.run([sys.executable, "-c", JITTER_ONE_IMAGE], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert np.isclose(float(run.stdout.split()[-1]), 150.0)  # brightness 1.5 of 100
