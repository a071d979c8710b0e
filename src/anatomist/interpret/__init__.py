"""Interpreting what a model computes with dictionaries: tasks, patching and explanations of features.

- `tasks`: behaviours as pairs of prompts (clean, counterfactual) with a metric on the last position; the offline
  IOI task (Wang et al. 2022) and user tasks from text records;
- `patching`: a dictionary's units at a site (features and an error node per position), activation patching and
  attribution patching of them, and the curve of behaviour change against the number of units patched
  (Cunningham et al. 2023, section 5);
- `autointerp*`: automatic explanations of features and their scores;
- `steer`: steering a model by adding feature directions.
"""
