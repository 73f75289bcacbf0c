"""Data pipeline: cohort discovery, NIfTI preprocessing and cache, slice selection, splits,
and the LightningDataModule. Kept free of heavy imports so cache-building workers start fast."""
