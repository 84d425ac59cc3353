"""The whole-tree index (`ProjectIndex`) and what its answers are made of (`Symbol`)."""

from tf_migrate.analysis.project.index import ProjectIndex, Symbol, canonical, find_root

__all__ = ["ProjectIndex", "Symbol", "canonical", "find_root"]
