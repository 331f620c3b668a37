"""The reference trainer: config sections, the loop, checkpoints, schedule, logging, signals."""
