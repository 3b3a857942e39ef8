"""Entry point for ``gunicorn wsgi:app``: the only module-level app."""

from expplatform import create_app

app = create_app()
