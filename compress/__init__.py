"""Training-time side of edgeqa: distillation, pruning, recipes and the `edgeqa` command line.

This package sits on top: it may import `export` and `bench`, never the other way round.
"""
