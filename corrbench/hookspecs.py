"""corrbench's plugin hooks.

Every hook is called with a ``register`` callback (the shape of simonw/llm): a plugin describes what
it offers cheaply and nothing is built until a run asks for it. A target may be the object itself or
a lazy ``"module:Object"`` string, so ``corrbench list`` and ``corrbench plugins`` never import torch,
diffusers or timm.

Implement a hook with ``@corrbench.hookimpl`` in the module named by your ``corrbench`` entry point.
An implementation may accept fewer arguments than the specification (pluggy's opt-in arguments), so
new arguments can be added here without breaking existing plugins.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("corrbench")
hookimpl = pluggy.HookimplMarker("corrbench")


@hookspec
def register_methods(register):
    """Register descriptor methods.

    ``register(target)`` with a :class:`corrbench.Descriptor` subclass, or
    ``register(name, "module:Class", description="...", aliases=(...))`` to have the class imported
    only when a run needs it. The name must be unique across all installed plugins; a clash is
    reported and the first registration is kept.

    A *family* of parametric names is registered under a name ending in ``*``:
    ``register("timm:*", "module:FAMILY", description="...", featured={"timm:resnet50": "..."})``.
    Every name starting with the prefix (``timm:vit_small_patch14_dinov2``) is built on first use by
    ``FAMILY.build(suffix)``, which returns a Descriptor subclass whose ``name`` is exactly the full name
    (or raises a one-line UsageError with close matches). Optional ``FAMILY.members(pattern, limit)``
    returns ``(rows, total)`` for ``corrbench list methods 'timm:*'``. ``featured`` names are listed and
    run by the conformance suite like ordinary methods. Families may not overlap.
    """


@hookspec
def register_datasets(register):
    """Register datasets.

    ``register(target)`` with a :class:`corrbench.Dataset` subclass, or
    ``register(name, "module:Class", description="...")`` for a lazily imported one.
    """


@hookspec
def register_readouts(register):
    """Register readouts: how a pair's feature maps become predicted keypoints (``--readout NAME``).

    ``register(target)`` with a :class:`corrbench.readouts.Readout` subclass, or
    ``register(name, "module:Class", description="...")`` for a lazily imported one. A method names
    its default in ``Descriptor.default_readout``; ``--readout NAME`` overrides it for a whole run and
    ``--set readout.key=value`` sets the readout's declared settings. See docs/plugins.md.
    """


@hookspec
def register_tables(register):
    """Register published comparison tables for ``corrbench reproduce <name>``.

    ``register(table)`` with a :class:`corrbench.reproduce.TableSpec` (its ``name`` is the command's
    argument), or ``register(name, "module:TABLE", description="...")`` for a lazily imported one. A table
    is plugin data: its rows (method id + the paper's settings), datasets (with the paper's split and
    protocol), metric, the published numbers and their source. Every method and dataset it names is
    looked up through the registries when it runs; a row whose plugin is missing is reported, not fatal.
    See docs/plugins.md and docs/reproduce.md.
    """


@hookspec
def register_plots(register):
    """Register report figures: a section of ``corrbench report --html`` drawn for each method of a run.

    ``register(name, fn, description="...")`` or ``register(name, "module:function", description="...")``.
    ``fn(ctx)`` gets a :class:`corrbench.plots.PlotContext` (``run_dir``, ``results``, ``method``, ``entry``:
    the method's results.json entry, ``figure(w, h)``) and returns a matplotlib Figure, or ``None`` when it
    has nothing to show for that method. A figure that raises is left out of the report with a warning.
    """


@hookspec
def register_protocols(register):
    """Register evaluation protocol presets (``--protocol NAME``).

    ``register(protocol)`` with a :class:`corrbench.protocols.Protocol`: every knob of a published
    evaluation (α values, ``<`` or ``≤``, headline average and norm, readout, input resize and size, flip
    averaging, pairs per category). A run records the whole preset in results.json; ``compare`` and
    ``leaderboard`` refuse to rank runs of different protocols. See docs/protocol.md#protocol-presets.
    """


@hookspec
def register_commands(cli):
    """Add click commands to the ``corrbench`` command group (``cli.add_command`` or ``@cli.command``)."""
