"""Building blocks of the docflow flows: one module per concern, pure helpers plus thin tasks."""
