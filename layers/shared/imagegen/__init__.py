"""Shared domain package of the image service: models, settings, errors, services and AWS/HTTP adapters.

Deployed as a Lambda layer (``layers/shared``); the functions in ``functions/`` are thin entry points on top.
Nothing here reads the environment or creates a client at import time.
"""
