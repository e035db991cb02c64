"""latentstore: image datasets stored as learned, entropy-coded latents, and models trained on them."""
__version__ = "0.1.0"
