"""gliograde: glioma-grade classification on 2D slices of multi-modal brain MRI."""

__version__ = "0.1.0"
