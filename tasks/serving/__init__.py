"""The HTTP model server."""
