"""The admin listener: metrics, health, and the operator API."""
