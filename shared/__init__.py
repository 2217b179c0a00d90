"""What both the API and the workers need: settings, Redis, key names, the status index."""
