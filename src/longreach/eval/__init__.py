"""Evaluation tasks. Each writes one JSON line per finished sample, so runs resume."""
