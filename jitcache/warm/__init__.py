"""Warming: the live warmup through DeepEP, its nvcc precompile pass, the rank exchange."""
