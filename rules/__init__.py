"""The rules: one module per rule, discovered automatically (see tf_migrate.registry)."""
