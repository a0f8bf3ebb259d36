"""The command line's start-up and exit shortcuts (videoldm/_startup.py): the caller's collector is left as it
was, ``import videoldm`` is light, and the program imports (and freezes) the network code only for commands."""

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


def _python(code: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.split()


def test_importing_videoldm_leaves_the_collector_on_and_nothing_frozen():
    code = "import gc, sys, videoldm; print('torch' in sys.modules, gc.isenabled(), gc.get_freeze_count())"
    assert _python(code) == ["False", "True", "0"]  # the public classes come on first use
    code = "import gc, videoldm; videoldm.VideoLDMPipeline; print(gc.isenabled(), gc.get_freeze_count())"
    assert _python(code) == ["True", "0"]


def test_the_program_freezes_its_imports_but_help_imports_no_network_code():
    run = "import gc, sys; from videoldm import cli; sys.argv = ['videoldm', {!r}]\n" \
          "try:\n    cli.run()\nexcept SystemExit:\n    pass\n" \
          "print('torch' in sys.modules, 'diffusers' in sys.modules, gc.isenabled())"
    assert _python(run.format("--help"))[-3:] == ["False", "False", "True"]
    assert _python(run.format("--version"))[-3:] == ["False", "False", "True"]
    # a command: the network code is imported up front (and frozen: no collection walks it)
    code = "import gc; from videoldm import cli, _startup; _startup.import_frozen(cli.PROGRAM_MODULES); " \
           "print(gc.isenabled(), gc.get_freeze_count() > 100_000)"
    assert _python(code) == ["True", "True"]


@pytest.mark.parametrize("arguments", [
    ["generate", "--frames", "-3"],                      # a bad option: typer's own check
    ["generate", "--out", "/proc/videoldm-test.mp4"],    # an output the file system refuses
    ["generate", "--decoder", "sharp"],                  # a value only the request layer knows
    ["interpolate", "--video", "missing.mp4"],           # a missing input file
    ["upsample", "--video", "missing.mp4"],
])
def test_a_bad_request_is_answered_before_torch_is_imported(arguments, tmp_path):
    """The program imports the network code only once a command's arguments are checked."""
    code = "import sys; from videoldm import cli; sys.argv = ['videoldm', *{!r}]\n" \
           "try:\n    cli.run()\nexcept SystemExit as exit:\n    print('exit', exit.code)\n" \
           "print('torch' in sys.modules, 'diffusers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code.format(arguments)], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.stdout.split()[-4:] == ["exit", "2", "False", "False"], result.stdout + result.stderr
    assert result.stderr.count("error:") == 1
