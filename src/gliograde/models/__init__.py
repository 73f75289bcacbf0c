"""Network backbones for glioma-grade classification."""
