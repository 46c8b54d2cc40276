"""clipaudit: where does CLIP's out-of-distribution accuracy come from?"""

__version__ = "0.1.0"
