"""Frankenstein SAEs: the stitching plan, the builder, exact and SGD decoder refits, reports and
curves.
"""
