"""End-to-end workflows composing the i2m2_med library, one file each, behind the `i2m2-med` CLI."""
