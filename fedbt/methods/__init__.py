"""FedBT's own methods (progressive pre-training, cyclic fine-tuning), registered by name."""
