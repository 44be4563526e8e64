"""Talking to model hubs: signatures, deliveries, fetching weights, Hugging Face, callbacks and a hub's client."""
