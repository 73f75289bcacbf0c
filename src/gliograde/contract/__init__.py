"""What a model takes and gives: the input contract, its record in a run, mask-free grading rules and the model card."""
