"""Wire protocol between agent and collector: request signing (shared by both sides)."""
