"""Test and benchmark tooling that ships with quotaflow (never imported by a component)."""
