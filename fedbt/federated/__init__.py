"""The federated simulator: methods, client plans, aggregation, rounds."""
