"""Training a model from a composed config: the fit/test sequence, callbacks, checkpoints, resume, tracking, distributed launch and the run record."""
