"""Speed, memory and quality benchmarks of i2m2-med; run with ``python -m benchmarks.run``."""
