"""Tools that measure the project; run from the repository root, not part of the library."""
