"""``python -m fovea`` runs the CLI."""

from fovea.cli import main

main()
