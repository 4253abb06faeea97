"""First-party operation plugins, one module per family (math, activations, layers, losses).

Each module is an entry point of group ``tapegrad`` in the root pyproject.toml, found the
same way as a third party's plugin; nothing here is imported by ``import tapegrad``.
"""
