"""The composed Hydra config: where conf/ lives, building objects from it, its schema, Hydra callbacks and the GPU request check."""
