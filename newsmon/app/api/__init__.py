"""The analysts' HTTP API and web page (``newsmon serve``): ``app.create_app`` builds it."""
