"""Patient-level evaluation: aggregation, metrics with bootstrap intervals, plots, Grad-CAM."""
