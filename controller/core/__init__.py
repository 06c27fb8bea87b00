"""The pure core: the declared and reported model, placement, config, claims, first-seen."""
