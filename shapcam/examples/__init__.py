"""Runnable examples: ``python -m shapcam.examples.photos`` (a real model on real photographs)."""
