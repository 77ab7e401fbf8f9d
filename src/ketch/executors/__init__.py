"""Executors: where task tries run."""
