"""Plots of run results (matplotlib is imported by each module, so import them only when plotting)."""
