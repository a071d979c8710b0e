"""Interpreting a dictionary's latents: automated explanations and their scores (autointerp, llm), steering,
the standard SAE evaluations (sparse probing, feature absorption), and causal localisation by feature patching
(tasks: IOI and your own prompt pairs; patching: activation and attribution patching of dictionary features)."""
