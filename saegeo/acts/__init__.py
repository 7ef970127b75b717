"""Activations: stores on disk, how they stream in batches, and the sparse codes of an SAE
on them.
"""
