"""Baselines, one module each; every module registers its method(s) with ``fedbt.federated.method.register``."""
