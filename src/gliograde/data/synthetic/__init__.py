"""The synthetic BraTS-layout cohort generator."""
