"""How fast the command line answers: wall seconds of a whole ``videoldm`` process (a fresh one each run)
against ``python -c pass``, the interpreter's own start, measured in the same run.

A bad request (a bad option, an output the file system refuses, an unknown value, a missing input
file) must be answered before torch is imported: under 1 s. ``--help`` and ``--version`` import no
network code either. Each case runs ``--repeats`` times, the cases in turn round after round
(:func:`timing.interleaved_medians`), and the medians are compared with ``python -c pass``'s.
``--compare-tree DIR`` also runs every videoldm case with another checkout's package first on the
path (e.g. a ``git worktree`` of an earlier commit), in the same rounds.

    python benchmarks/startup.py [--repeats 9] [--compare-tree /tmp/old] [--json startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import interleaved_medians, machine_note

PROGRAM = [sys.executable, "-m", "videoldm"]
# case -> (command line, the exit status it must end with)
CASES = {
    "python -c pass": ([sys.executable, "-c", "pass"], 0),
    "videoldm --help": ([*PROGRAM, "--help"], 0),
    "videoldm --version": ([*PROGRAM, "--version"], 0),
    "generate --frames -3 (a bad option)": ([*PROGRAM, "generate", "--frames", "-3"], 2),
    "generate --decoder sharp (an unknown value)": ([*PROGRAM, "generate", "--decoder", "sharp"], 2),
    "generate --out /proc/x.mp4 (an unwritable output)": ([*PROGRAM, "generate", "--out", "/proc/x.mp4"], 2),
    "interpolate --video missing.mp4 (a missing input)": ([*PROGRAM, "interpolate", "--video", "missing.mp4"], 2),
    "upsample --video missing.mp4 (a missing input)": ([*PROGRAM, "upsample", "--video", "missing.mp4"], 2),
}


def runner(command: list[str], status: int, cwd: Path, tree: Path | None = None):
    """A call that runs ``command`` once in ``cwd`` (with ``tree``'s videoldm first on the path) and fails unless it
    exits with ``status``."""
    env = os.environ | ({"PYTHONPATH": str(tree)} if tree is not None else {})

    def run() -> None:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        if result.returncode != status:
            raise SystemExit(f"{' '.join(command)}: exit {result.returncode}, expected {status}\n{result.stderr[-2000:]}")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9, help="rounds of every case (medians are reported)")
    parser.add_argument("--compare-tree", type=Path, help="a checkout whose videoldm package runs the same cases")
    parser.add_argument("--json", type=Path, help="also write the medians to this JSON file")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: expected at least 1")
    if args.compare_tree is not None and not (args.compare_tree / "videoldm" / "__init__.py").is_file():
        parser.error(f"--compare-tree {args.compare_tree}: no videoldm package there")
    with tempfile.TemporaryDirectory() as workdir:
        cases = {name: runner(command, status, Path(workdir)) for name, (command, status) in CASES.items()}
        if args.compare_tree is not None:
            cases |= {f"{name}, {args.compare_tree}": runner(command, status, Path(workdir), args.compare_tree.absolute())
                      for name, (command, status) in CASES.items() if command[:3] == PROGRAM}
        medians = interleaved_medians(cases, args.repeats)
    floor = medians["python -c pass"]
    print(f"{machine_note()}; {args.repeats} rounds, medians\n")
    print("| command | s | x python -c pass |\n|---|---:|---:|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.3f} | {seconds / floor:.1f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"repeats": args.repeats, "seconds": medians}, indent=2) + "\n")


if __name__ == "__main__":
    main()
