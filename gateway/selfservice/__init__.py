"""Endpoints a caller uses about itself, with its own API key: /usage/me (and billing)."""
