"""nn-caption."""
