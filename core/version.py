"""tapegrad's version: the one copy (pyproject.toml reads this literal when building)."""

__version__ = "0.3.0.dev0"
