"""Interpreting what a dictionary's features do: automated explanations and their scores, and interventions."""
