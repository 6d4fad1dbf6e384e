"""Real agent processes for end-to-end tests."""
