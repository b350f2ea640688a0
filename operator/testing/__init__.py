"""Test helpers that need no cluster of their own: a local Kubernetes control plane."""
