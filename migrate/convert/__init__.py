"""`tf-migrate convert`: apply a migration's checkpoint plan to real checkpoint files.

Everything here imports torch lazily, inside functions: the rewrite path never loads it.
"""
