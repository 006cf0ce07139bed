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

__version__ = "0.1.0"

__all__ = [
    "CorrbenchError", "DataError", "Dataset", "Descriptor", "FeatureGrid", "MissingDataError", "Option", "Pair",
    "PairConditionedDescriptor", "Preprocess", "UsageError", "WeightsError", "hookimpl", "__version__",
]
