"""The benchmarks' code, on tiny inputs (figures come from `make bench`)."""
