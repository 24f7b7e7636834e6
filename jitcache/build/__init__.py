"""Building: compile jobs, the parallel pool and its locks, the toolchain, header sources, Triton AOT."""
