"""From evidence to a verdict: name screening, matching renders, the decision, calibration and evidence pages."""
