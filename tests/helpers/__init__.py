"""Shared test fixtures and naive references, one module per concern."""
