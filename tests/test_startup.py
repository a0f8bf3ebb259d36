"""The command line's start-up and exit shortcuts (videoldm/_startup.py) leave the caller's collector as it was."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from videoldm._startup import garbage_collection_paused


@pytest.mark.parametrize("enabled", [True, False])
def test_garbage_collection_paused_restores_the_callers_setting(enabled):
    (gc.enable if enabled else gc.disable)()
    try:
        with garbage_collection_paused():
            assert not gc.isenabled()
        assert gc.isenabled() == enabled
        with pytest.raises(RuntimeError), garbage_collection_paused():
            raise RuntimeError("restored on errors too")
        assert gc.isenabled() == enabled
    finally:
        gc.enable()


def test_importing_videoldm_leaves_the_collector_on_and_nothing_frozen():
    code = "import gc, videoldm; print(gc.isenabled(), gc.get_freeze_count())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["True", "0"]
