"""Side-by-side measurements of docflow against the clients users write today (`make bench`)."""
