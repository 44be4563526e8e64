"""What rights holders protect: characters and their references, the blocklist, and the demo world."""
