"""Training SAEs and families: configuration, trainer, per-architecture steps, losses, sparse
kernels, toy models.
"""
