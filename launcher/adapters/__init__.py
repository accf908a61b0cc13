"""Adapters: the launcher's ports implemented on Redis, Celery, Docker and HTTP.

Only this package (and the composition roots: ``launcher.bootstrap``, the process entry points) imports
redis, celery, kombu or docker; ``tests/test_architecture.py`` checks it.
"""
