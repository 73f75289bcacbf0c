"""Grading new patients: find their files, stream each from NIfTI to slice probabilities with the
model's input contract, and report. Nothing here writes a cache or needs labels."""
