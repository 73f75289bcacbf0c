"""A multirun's jobs: failures recorded per job, the table and plot of a sweep, and the cross-validation summary."""
