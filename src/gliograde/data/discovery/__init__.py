"""Cohort discovery: patient folders, NIfTI headers, the label table, identity by content, and the typed data.* options."""
