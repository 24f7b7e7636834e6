"""What to warm: profiles, the bucket policy and the variant plan (pure; no I/O beyond reading a profile)."""

#: The built-in profile commands use when none is given: the H200 test rig (EP1, DeepSeek-V3 MoE shape).
#: Here rather than in :mod:`.profiles` so that the CLI can show it as a default without loading profiles.
DEFAULT_PROFILE = "h200-ep1"
