"""disco's runnable daemons (aggregator, agent, dns, gateway) and the ``disco`` command; they depend on ``bus``."""
