"""Running rules over files: discovery, reading sources, configuration, the cache, parallel runs,
the rule base class, registry and index, the per-file context, suppressions, applying edits, and
the text/JSON/SARIF/GitHub reports. May import `tf_migrate.analysis` and `tf_migrate.plan`; it
reaches the rules only through the registry (by package discovery), never by importing one.
"""
