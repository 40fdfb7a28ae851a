"""Corpus readers, manifest writing and validation, and the synthetic sample corpus."""
