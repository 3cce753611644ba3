"""``python -m neardup`` runs the command line."""

from .cli import main

main()
