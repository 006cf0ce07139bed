"""Built-in DHPF / HPF baselines (work in progress)."""
