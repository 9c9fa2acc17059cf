"""Benchmarks of cnnpipe (not tests): ``python -m benchmarks.run_issue3 [--quick]``."""
