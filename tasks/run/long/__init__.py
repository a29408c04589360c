"""Documents over the model's context: reject, truncate or split; the reduce step; combining chunks."""
