"""Hospital scans to the model's space: DICOM/NIfTI discovery, registration to the model's template, quality checks."""
