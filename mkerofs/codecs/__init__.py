"""Compression algorithms: one codec per algorithm, bound to native libraries in one place."""
