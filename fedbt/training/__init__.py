"""Local training: objectives and the training loop."""
