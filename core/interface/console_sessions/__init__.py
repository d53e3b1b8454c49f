"""Console sessions."""
