"""Helpers every layer uses and none of them is about images: the name registry, atomic file writes,
inter-process locks, quiet TensorFlow start-up, the project's folders (notebooks, parameter files, the
default results store) and reading YAML files."""
