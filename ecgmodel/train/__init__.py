"""Training: typed pretraining config and presets, the loop, full-state checkpoints, DDP helpers."""
