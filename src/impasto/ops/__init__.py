"""Pure differentiable tensor math shared by every layer (no I/O, no state)."""
