"""One module per command; each knows the domain, none knows argv or printing."""
