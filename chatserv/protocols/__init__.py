"""Wire protocols: one module per protocol, thin adapters over ChatService."""
