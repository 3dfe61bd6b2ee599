"""The vault on shared storage: copies of generations that outlive the node."""
