"""Training loops for the methods that learn networks (beside methods; api and cli sit above)."""
