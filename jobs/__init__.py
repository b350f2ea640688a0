"""The workloads that run inside the pods (and locally): generate, train, serve."""
