"""Tiny random models built from the real config classes, for CPU tests, CI and the demo.

They go through save_pretrained / from_pretrained exactly like a user's checkpoint.
"""
