"""Helpers every layer uses and none of them is about images: the name registry, atomic file writes,
inter-process locks, quiet TensorFlow start-up, and finding the project's notebooks and parameter files."""
