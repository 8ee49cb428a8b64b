"""requestflow: reproducible SW/HW co-design benchmarks of MobileNets-v1 on edge boards."""

__version__ = "0.1.0"
