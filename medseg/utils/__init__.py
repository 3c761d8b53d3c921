"""Small shared helpers (atomic files, hashing, JSON)."""
