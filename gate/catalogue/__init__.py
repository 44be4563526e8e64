"""The back catalogue: stored renders, screening on registration, rescans and importing a hub's catalogue."""
