"""``python -m corrbench.reproduce TABLE [PATH]``: rewrite a registered table's paper baseline file."""

import sys

from .spec import table_names, write_paper_baseline

if len(sys.argv) < 2:
    sys.exit(f"usage: python -m corrbench.reproduce TABLE [PATH]; tables: {', '.join(table_names()) or '(none)'}")
print(write_paper_baseline(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
