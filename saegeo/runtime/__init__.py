"""Where and how work runs and what it leaves behind: devices, torch.distributed process
groups, checked paths, atomic writes, and the outputs saegeo claims and recognises as its own.
"""
