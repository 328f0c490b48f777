"""advtrain: adversarial training and robustness diagnosis of image classifiers."""

__version__ = "0.1.0"
