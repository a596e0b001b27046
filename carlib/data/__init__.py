"""Data: archives, class folders and the split, file screening, the dataset check, augmentation and TTA presets,
the tf.data pipeline and the embedded synthetic dataset."""
