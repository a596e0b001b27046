"""Data: archives, class folders and the split, file screening, the dataset check, the tf.data pipeline and the
embedded synthetic dataset."""
