"""``python -m pgfailover`` runs the command line."""

from pgfailover.cli import main

main()
