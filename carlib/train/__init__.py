"""Training: the runtime (strategy, precision, XLA, determinism), the run's setup (split, datasets, model),
fine-tuning stages, the learning-rate schedule (the one writer of the LR), callbacks, resuming a killed
trial, the experiment function and the LR range test."""
