"""Files: SAE formats, activation stores and how they stream, text sources, atomic writes."""
