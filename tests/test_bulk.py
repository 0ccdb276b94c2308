"""gc_paused: the collector is off inside and back as it was after, errors included."""
import gc

import pytest

from dist_geo.bulk import gc_paused


def test_gc_paused_restores_the_collector_state():
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with gc_paused():
            assert not gc.isenabled()
            raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
