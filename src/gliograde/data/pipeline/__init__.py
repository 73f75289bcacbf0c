"""A cohort made ready for training (discover -> cache -> split -> slices) and the tables that describe it."""
