"""flux-images: the bulk command-line client of the Flux image service."""
