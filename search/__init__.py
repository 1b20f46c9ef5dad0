"""The C2FNAS search: coarse (topology) and fine (operation) stages."""
