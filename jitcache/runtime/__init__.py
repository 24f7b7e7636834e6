"""The serving side: the bucketed dispatcher, its miss guard, install() and dispatch stats."""
