"""The SAE and what belongs to it: architectures, input normalisation, matching pursuit, families
and sparse codes.
"""
