"""Measurement side of edgeqa: SQuAD data, the official EM/F1, QA inference, latency and reports.

This package is the bottom layer: it imports neither `export` nor `compress`.
"""
