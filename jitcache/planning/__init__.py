"""What to warm: profiles, the bucket policy and the variant plan (pure; no I/O beyond reading a profile)."""
