"""Celery side: the app, thin tasks, the Docker runtime and the session lifecycle they drive."""
