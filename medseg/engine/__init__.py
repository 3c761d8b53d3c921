"""Training: the loop, losses, prefetching, training state and its logs."""
