"""Evaluation: metrics of predictions, models on images (which checkpoint, other input sizes), test-time
augmentation that really augments, both checkpoints of a run on its own clean split, the FixRes curve,
and the validated competition submission."""
