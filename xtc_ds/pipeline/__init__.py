"""The GLUE training pipeline behind ``launch/train.py``."""
