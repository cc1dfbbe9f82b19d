"""pynba: Pinba for Python apps (the classic pynba API)."""

__all__: list[str] = []
