"""The HTML report of one or more runs (``corrbench report RUN … --html FILE``).

:mod:`.data` reads run folders into plain numbers, :mod:`.figures` draws them (base64 PNG, so the
page is one self-contained file), :mod:`.html` renders ``template.html.j2``.
"""

from __future__ import annotations

from .html import write_report

__all__ = ["write_report"]
