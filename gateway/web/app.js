// The web client: see docs/client.md.
