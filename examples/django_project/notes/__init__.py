"""The example's app: notes."""
