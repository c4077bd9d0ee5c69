"""Static files of the preview console (``GET /console``), served by ``service.api.console``.

Plain HTML, CSS and JavaScript: nothing to build, nothing fetched from a CDN.
"""
