"""Effects on reconstruction, measured by streaming activations: metrics, delta-MSE, hybrids,
novelty, interpolation.
"""
