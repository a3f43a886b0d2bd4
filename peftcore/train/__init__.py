"""Training utilities: data loading, tokenisation and batching (see ``data``)."""
