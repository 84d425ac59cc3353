"""The rules: one package per rule, named as its fixture folder, discovered automatically
(see tf_migrate.engine.registry). A rule package imports `tf_migrate.analysis`, `tf_migrate.engine.rule`
and `tf_migrate.plan`, never another rule; nothing outside the rules imports a rule by name.
"""
