"""Figures (plotly) and the standalone HTML report."""
