"""The one place the version is written (pyproject.toml reads it; shapcam.__version__ re-exports it)."""
__version__ = "0.2.0"
