"""Stress tests for lenses (Sharkey 2022): planted toys, stressors that hide their truth, lenses scored on it.

>>> from anatomist.stress import base_scenario, STRESSORS, LENSES, Budget
>>> stressed = STRESSORS["rotate_residual"](base_scenario(), 0, 0)
>>> LENSES["resid_axes"](stressed.scenario, Budget(), 0).score(stressed.scenario)   # the axes lose the features
"""

from anatomist.stress.lenses import LENSES, METRIC, THRESHOLD, Budget
from anatomist.stress.stressors import STRESSORS, Stressed
from anatomist.stress.table import stress_table
from anatomist.stress.toy import Scenario, StressNet, Truth, base_scenario, planted_model

__all__ = ["LENSES", "METRIC", "STRESSORS", "THRESHOLD", "Budget", "Scenario", "StressNet", "Stressed", "Truth",
           "base_scenario", "planted_model", "stress_table"]
