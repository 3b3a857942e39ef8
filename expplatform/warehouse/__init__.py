"""Warehouse-native reports: an experiment's sufficient statistics computed by SQL
inside the analytical database that holds its events (``query``, the same rules as
the built-in counters), on a connection of ``engines``, for a source defined in
``sources``, refreshed in the background and cached per experiment (``refresh``)."""
