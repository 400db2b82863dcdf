"""Wharf's own web surfaces, apart from the channels' HTTP sources: the admin listener's
console and JSON API (``engine.web.console``) and the health, metrics, alert and SLO
resources it mounts (``engine.web.observability``)."""
