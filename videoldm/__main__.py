"""``python -m videoldm``: the command line (so ``accelerate launch -m videoldm train ...`` works)."""

from .cli import run

run()
