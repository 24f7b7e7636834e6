"""The `jitcache` command line (installed as ``jitcache.cli``). The only package that prints."""
