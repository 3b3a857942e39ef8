"""Entry point for ``gunicorn wsgi:app``: the only module-level app."""

from expplatform import create_app, plots

app = create_app()

# Serving workers only (the CLI never imports this module): each worker gunicorn forks
# loads the plotting stack in the background, so its first report page need not wait.
plots.warm_up_after_fork()
