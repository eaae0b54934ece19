"""Class lists of the paper's eight benchmarks (package data)."""
