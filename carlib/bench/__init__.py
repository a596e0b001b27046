"""Benchmarks that print figures (never timed unit tests): the input pipeline and harness speed
(``carlib bench``) and the CPU recipe against a plain Keras CNN (``carlib bench recipe``)."""
