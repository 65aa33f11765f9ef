"""The clinic queue: a real FastAPI app whose background work runs on afterwork."""
