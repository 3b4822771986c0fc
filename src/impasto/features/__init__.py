"""Encoders: [0, 1] RGB in, ``dict[layer_name, Tensor]`` out, from one forward pass."""
