"""The on-disk cache: root layout, native-format readers, maintenance."""
