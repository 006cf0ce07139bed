"""Built-in real datasets: SPair-71k, CUB-200-2011 and DHF-schema pair lists (work in progress)."""
