"""Built-in DINO and DINOv2 descriptors (work in progress)."""
