"""Shared understanding of Python and nn.Module code that more than one rule uses: nodes, names
and scopes, def-use flow, shapes, module classes and their submodules, nn base classes, imports,
einsum specs, attention and FFN recognition, the model graph. Imported by rules and the engine;
imports neither (only `tf_migrate.engine.context`, for type hints of the per-file context).
"""
