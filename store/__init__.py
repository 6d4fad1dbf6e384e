"""PostgreSQL store: one module of plain `$n` SQL per table, returning pydantic models."""
