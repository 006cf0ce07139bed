"""The embedded benchmark: a generated semantic-correspondence dataset in the SPair-71k layout."""

import corrbench


@corrbench.hookimpl
def register_datasets(register):
    register("synthetic", "corrbench_synthetic.dataset:SyntheticDataset",
             description="Generated creatures (bird, car, fish, robot) in SPair-71k layout; offline, deterministic")
