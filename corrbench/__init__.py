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

The stable surface — what plugins and notebooks may import, kept compatible across minor versions:

* ``corrbench`` itself: the contracts (``Descriptor``, ``PairConditionedDescriptor``, ``SharedPass``,
  ``Dataset``, ``Pair``, ``FeatureGrid``, ``Preprocess``, ``Option``, ``Requirement``, ``Readout``,
  ``ReadoutInput``, ``ReadoutOutput``), ``hookimpl``, the errors, and the notebook API (``evaluate``,
  ``get_method``, ``as_descriptor``, ``Result``);
* ``corrbench.hookspecs`` (the hook reference), ``corrbench.reproduce`` (``TableSpec``, ``Row``,
  ``DatasetSpec``), ``corrbench.testing`` (tiny models and fixtures for plugin tests).

Everything else is internal. See docs/plugins.md and docs/python-api.md.
"""

from .api import Dataset, Descriptor, FeatureGrid, Pair, PairConditionedDescriptor, Preprocess, SharedPass
from .errors import CorrbenchError, DataError, MissingDataError, UsageError, WeightsError
from .hookspecs import hookimpl
from .options import Option
from .readouts import Readout, ReadoutInput, ReadoutOutput
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
    "PairConditionedDescriptor", "Preprocess", "Readout", "ReadoutInput", "ReadoutOutput", "Requirement", "Result",
    "SharedPass", "UsageError", "WeightsError", "as_descriptor", "evaluate", "get_method", "hookimpl", "__version__",
]
