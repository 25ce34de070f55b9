"""Tools that use every layer of the library: the ahead-of-time TPU compiler (aot.py)."""
