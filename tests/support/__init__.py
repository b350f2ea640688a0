"""Helpers shared by the test suites (manifests, servers)."""
