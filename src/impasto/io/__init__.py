"""File input and output: the only part of impasto that touches image files.

Import what you need from the submodules (``impasto.io.image``); nothing is re-exported here
so that importing the package does no work.
"""
