"""Small CLI commands that belong to no single stage (vocabulary, corpus, bench, demo)."""
