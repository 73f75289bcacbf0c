"""The slice cache: per-patient preprocessing, the cache's key, meta record, build, read and housekeeping, and its worker processes."""
