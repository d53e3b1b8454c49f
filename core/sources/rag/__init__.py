"""Retrieval: collections, chunking, grounding; vectors and keywords in the registered vector store
and keyword index."""
