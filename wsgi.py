"""Entry point for ``gunicorn wsgi:app``: the only module-level app."""

import threading

from expplatform import create_app, plots

app = create_app()

# Serving workers only (the CLI never imports this module): load the plotting stack in
# the background, so the first report page a fresh worker serves does not wait for it.
threading.Thread(target=plots.warm_up, name="plots-warm-up", daemon=True).start()
