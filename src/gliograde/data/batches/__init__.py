"""Slices and batches: slice selection, crops, patient splits, the dataset, samplers, augmentation and the device cache."""
