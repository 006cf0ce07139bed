"""Built-in Diffusion Hyperfeatures methods (work in progress)."""
