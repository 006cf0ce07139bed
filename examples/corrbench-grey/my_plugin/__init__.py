# my_plugin/__init__.py  — with  [project.entry-points.corrbench]  grey = "my_plugin"
import corrbench

class Grey(corrbench.Descriptor):
    name = "grey"
    weight_free = True                        # no weights: its code and config fix the features
    def extract(self, images):               # B×3×H×W float in [0, 1], default load size
        return images.mean(dim=1, keepdim=True)  # B×C×h×w; default grid: cells span the image

@corrbench.hookimpl
def register_methods(register):
    register(Grey)                            # or register("grey", "my_plugin:Grey"), imported lazily
