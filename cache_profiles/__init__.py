"""Built-in deployment profiles (TOML), shipped as package data of jitcache."""
