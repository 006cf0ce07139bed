"""Built-in Stable Diffusion feature methods (work in progress)."""
