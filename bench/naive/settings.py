"""Settings of the naive app: PostgreSQL from NAIVE_DATABASE_URL, nothing else."""

import os

import dj_database_url

SECRET_KEY = "bench-only-naive-app"  # nosec B105: a loopback benchmark app, no sessions
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["rest_framework", "bench.naive"]
ROOT_URLCONF = "bench.naive.urls"
# Django's own psycopg pool (5.1+): the floor is a well-configured app, not one that
# opens a connection per request (under ASGI each request runs in its own thread, so
# CONN_MAX_AGE would keep one connection per thread and exhaust the server's).
DATABASES = {"default": dj_database_url.parse(os.environ["NAIVE_DATABASE_URL"])}
DATABASES["default"]["OPTIONS"] = {"pool": {"min_size": 2, "max_size": 20}}  # as ours
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
}
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
