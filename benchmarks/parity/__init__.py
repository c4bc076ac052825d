"""The parity study: our training against the original PyTorch code (README.md here)."""
