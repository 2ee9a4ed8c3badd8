"""Test-only code: reference oracles and small networks that the test suite and the benchmarks
check production code against.  Nothing in train/, export/, neuromorphic/ or energy/ imports it."""
