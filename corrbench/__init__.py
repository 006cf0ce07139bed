"""corrbench: benchmark dense image descriptors on semantic keypoint correspondence.

Plugin authors need only what is exported here::

    import corrbench

    class Grey(corrbench.Descriptor):
        name = "grey"
        def extract(self, images):
            return images.mean(dim=1, keepdim=True)

    @corrbench.hookimpl
    def register_methods(register):
        register(Grey)
"""

from .api import Dataset, Descriptor, FeatureGrid, Pair, PairConditionedDescriptor, Preprocess
from .errors import CorrbenchError, DataError, MissingDataError, UsageError, WeightsError
from .hookspecs import hookimpl
from .options import Option
from .requirements import Requirement

__version__ = "0.1.0"

#: the notebook API (corrbench.evaluate); imported on first use, so `import corrbench` stays light
_LAZY = {"evaluate": "evaluation", "get_method": "evaluation", "as_descriptor": "evaluation", "Result": "evaluation"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'corrbench' has no attribute {name!r}")


__all__ = [
    "CorrbenchError", "DataError", "Dataset", "Descriptor", "FeatureGrid", "MissingDataError", "Option", "Pair",
    "PairConditionedDescriptor", "Preprocess", "Requirement", "UsageError", "WeightsError", "hookimpl", "__version__",
]
