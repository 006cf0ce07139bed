"""Built-in real datasets: SPair-71k (+ SPair-U), CUB-200-2011, PF-PASCAL, PF-WILLOW, AP-10K and DHF-schema
pair lists, plus ``corrbench data``.

Targets are lazy strings so that listing datasets imports nothing heavy.
"""

import corrbench


@corrbench.hookimpl
def register_datasets(register):
    register("spair", "corrbench_datasets.spair:SPairDataset",
             description="SPair-71k: splits trn, val, test (12,234 pairs), the DHF subsets dhf-test-360, dhf-val-360 "
                         "and spair-u (SPair-U's unseen keypoints)")
    register("cub", "corrbench_datasets.cub:CUBDataset",
             description="CUB-200-2011 bird parts: a frozen, seeded list of same-class test pairs (default 360)")
    register("dhf-json", "corrbench_datasets.dhf_json:DhfJsonDataset",
             description="your own pairs in the DHF JSON schema (--set dhf-json.pairs=FILE --data-root IMAGES)")
    register("pf-pascal", "corrbench_datasets.pf_pascal:PFPascalDataset",
             description="PF-PASCAL (NCNet split): test (299 pairs), val, train; standard: img norm, alphas 0.05/0.1/0.15")
    register("pf-willow", "corrbench_datasets.pf_willow:PFWillowDataset",
             description="PF-WILLOW: 900 test pairs; bbox = tight box of the target keypoints (-1 padding dropped)")
    register("ap-10k", "corrbench_datasets.ap10k:AP10KDataset",
             description="AP-10K animals in GeoAware-SC's pair layout: intra-species, cross-species, cross-family")
    register("spair-u", "corrbench_datasets.spair_u:SPairUDataset",
             description="SPair-U: SPair-71k test pairs relabelled with unseen keypoints (= spair --split spair-u)")


@corrbench.hookimpl
def register_commands(cli):
    from .cli import data

    cli.add_command(data)
