"""``python -m sparsekit ...``: the ``sparsekit`` command without its console script."""
import sys

from sparsekit.cli import main

main(sys.argv[1:])
