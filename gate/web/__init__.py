"""The web gate's surfaces, one blueprint each: hub deliveries, the JSON API, health and metrics."""
