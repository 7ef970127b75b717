"""Collection rules for the docstring examples under saegeo/ (tests/ has its own conftest)."""

import importlib.util

# The Triton kernel's module imports Triton, which only CUDA builds of PyTorch bring.
collect_ignore = [] if importlib.util.find_spec("triton") else ["saegeo/core/gram_kernel.py"]
