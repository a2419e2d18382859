"""tailorml: adapt a pretrained model to your own data — fine-tune, compress, serve, apply."""

__version__ = "0.1.0"
