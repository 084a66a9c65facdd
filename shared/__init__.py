"""The common core of the key manager: schemas, stores, policies, usage, auth, settings.

Nothing here imports a web framework; `functions/` and `local/` sit on top of it.
"""
