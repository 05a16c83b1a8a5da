"""Training: state, optimiser, sharding, checkpoints, tasks (objectives wired to models and data), the loop."""
