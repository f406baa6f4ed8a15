"""fedbt-bench: reproducible benchmark and ablation suite for FedBT (federated BERT/ViT training on weak clients)."""

__version__ = "0.1.0"
