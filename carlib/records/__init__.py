"""Records: one JSON record per run (built in one place), the results store many processes write to, and the
combined table with its columns. No TensorFlow: reading results is fast."""
