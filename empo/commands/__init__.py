"""One module per command group; each has `register(subparsers)` and imports heavy code lazily."""
