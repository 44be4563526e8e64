"""People's side: accounts, sign-in throttling, the quarantine queue and disputes."""
