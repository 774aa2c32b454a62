"""Benchmarks: each prints its figures and bars (PASS/FAIL) measured against a baseline in the same run.

Run one with ``python -m bench.<name>``; ``make bench`` runs them all. Not part of the test suite.
"""
