"""One module per kind, each exposing KIND (a registry.KindSpec); registry.py lists them."""
