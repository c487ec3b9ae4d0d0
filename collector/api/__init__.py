"""The collector's HTTP surface: routers, request parsing, authentication, metrics."""
