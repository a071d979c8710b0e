"""Interpreting a dictionary's latents: steering with them, and the standard SAE evaluations built on them
(sparse probing, feature absorption, autointerp, feature patching)."""
