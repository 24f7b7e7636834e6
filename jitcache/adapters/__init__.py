"""How DeepEP names and builds a kernel, one module set per DeepEP version (2.5/DeepJIT, 2.1)."""
