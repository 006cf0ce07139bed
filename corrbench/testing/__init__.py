"""Helpers for plugin authors and corrbench's own tests: plugin hosts, conformance checks, tiny models.

Submodules with heavy imports (``corrbench.testing.sd``, ``.vit``, ``.datasets``) are imported on demand.
"""
