"""Built-in Diffusion Hyperfeatures methods, training, pictures and synthetic transfer.

Methods (lazy, so listing imports neither torch nor diffusers): ``dhf``, ``dhf-one-step``, ``dhf-sd21``,
``sd-layer-pruned``, ``dhf-pruned``. Table: ``dhf-table`` (``corrbench reproduce dhf-table``, :mod:`.table`).
Commands: ``corrbench train dhf``, ``corrbench plot mixing-weights`` and ``corrbench generate``. Report figure:
``mixing-weights`` (the heat map of a DHF method's checkpoint, in ``corrbench report --html``).
"""

import corrbench


@corrbench.hookimpl
def register_methods(register):
    register("dhf", "corrbench_dhf.methods:DHF", extras=("sd",),
             description="Diffusion Hyperfeatures (Ours): SD-1.5, 12 layers x 11 inversion steps, aggregation network")
    register("dhf-one-step", "corrbench_dhf.methods:DHFOneStep", extras=("sd",),
             description="Ours-One-Step: SD-1.5, 12 layers of the clean pass (t=-1), aggregation network")
    register("dhf-sd21", "corrbench_dhf.methods:DHFSD21", extras=("sd",),
             description="Ours-SDv2-1: SD-2.1-base, 12 layers x 11 inversion steps, aggregation network")
    register("sd-layer-pruned", "corrbench_dhf.methods:SDLayerPruned", extras=("sd",),
             description="SD-Layer-Pruned: raw SD feature of the slot with the largest dhf mixing weight")
    register("dhf-pruned", "corrbench_dhf.methods:DHFPruned", extras=("sd",),
             description="Ours-Pruned: the largest-weight (timestep, layer) slot through its trained dhf bottleneck")


@corrbench.hookimpl
def register_tables(register):
    register("dhf-table", "corrbench_dhf.table:DHF_TABLE",
             description="Diffusion Hyperfeatures (Luo et al., NeurIPS 2023), main comparison table: nine rows, "
                         "SPair-71k test-360 and CUB")


@corrbench.hookimpl
def register_plots(register):
    register("mixing-weights", "corrbench_dhf.plots:report_mixing_weights",
             description="DHF: softmax mixing weights of the aggregation network, timesteps x layers")


@corrbench.hookimpl
def register_commands(cli):
    from .commands import add_commands

    add_commands(cli)
