"""Experiments from the paper that take longer than a test: python -m shapcam.experiments.<name>."""
