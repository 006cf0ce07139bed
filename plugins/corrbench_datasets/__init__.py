"""Built-in real datasets: SPair-71k, CUB-200-2011 and DHF-schema pair lists, plus ``corrbench data``.

Targets are lazy strings so that listing datasets imports nothing heavy.
"""

import corrbench


@corrbench.hookimpl
def register_datasets(register):
    register("spair", "corrbench_datasets.spair:SPairDataset",
             description="SPair-71k: splits trn, val, test (12,234 pairs) and the DHF subsets dhf-test-360, dhf-val-360")
    register("cub", "corrbench_datasets.cub:CUBDataset",
             description="CUB-200-2011 bird parts: a frozen, seeded list of same-class test pairs (default 360)")
    register("dhf-json", "corrbench_datasets.dhf_json:DhfJsonDataset",
             description="your own pairs in the DHF JSON schema (--set dhf-json.pairs=FILE --data-root IMAGES)")


@corrbench.hookimpl
def register_commands(cli):
    from .cli import data

    cli.add_command(data)
