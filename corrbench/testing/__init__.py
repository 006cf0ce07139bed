"""Helpers for plugin authors and corrbench's own tests: CLI invocation, fixture writers, tiny models.

Submodules with heavy imports (``corrbench.testing.sd``, ``.datasets``, ``.vit``) are imported on demand.
"""

from __future__ import annotations

import contextlib
import io
import traceback


def invoke_cli(args: list[str]) -> tuple[int, str, str]:
    """Run the ``corrbench`` CLI in this process like the console script: (exit code, stdout, stderr)."""
    from corrbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # --debug re-raises: show it as Python would
            traceback.print_exc(file=err)
            code = 1
    return code, out.getvalue(), err.getvalue()
