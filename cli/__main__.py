"""`python -m jitcache.cli` == `jitcache`."""

from .app import main

main()
