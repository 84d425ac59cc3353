"""`tf-migrate verify`: proves that a migrated model computes what the original did.

Everything here imports torch; the rewrite path never imports this package.
"""
