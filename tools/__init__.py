"""Developer tools run with `python -m tools.<name>` (not part of the image)."""
