"""Model catalogs: which models exist, where they are served, whether they are ready."""
