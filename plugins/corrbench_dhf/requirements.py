"""The aggregation network a DHF method needs (:meth:`corrbench.Descriptor.requirements`), looked up in the
Hugging Face cache or on disk without downloading anything."""

from __future__ import annotations

from typing import Any

from corrbench.requirements import NOT_NEEDED, PRESENT, Requirement, fetchable, file_requirement, hf_cached


def dhf_requirement(spec: Any, released_file: str) -> Requirement:
    """A DHF aggregation network (``weights``: auto | random | hf://repo/path | PATH)."""
    from . import weights as w

    spec = str(spec or "auto").strip()
    what = "DHF aggregation network"
    if spec == "random":
        return Requirement("weights", what + " (random, untrained)", "seeded", NOT_NEEDED)
    if spec == "auto" or spec.startswith("hf://"):
        repo, filename = w.HF_REPO, released_file
        if spec.startswith("hf://"):
            parts = spec[len("hf://"):].split("/")
            repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
        found = hf_cached(repo, [filename])
        if found:
            return Requirement("weights", what, found, PRESENT)
        return Requirement("weights", what, f"hf://{repo}/{filename}", fetchable(),
                           f"not in the Hugging Face cache; {w.how_to_get(repo, filename)}")
    return file_requirement(what, spec, "pass --set <row>.weights=PATH, or 'auto' for the released file")
