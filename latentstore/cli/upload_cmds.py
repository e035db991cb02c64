"""`latentstore upload`: the service's client (being written)."""
