"""The run store, the aggregate table and the figures."""
